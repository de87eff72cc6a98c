package natsjs

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestParseAck reads real acknowledgements of an embedded server (stored,
// duplicate, refused by the expected last subject sequence, with and
// without a JetStream domain) and checks that the quick reading agrees with
// a JSON decode, and that anything else falls back to JSON.
func TestParseAck(t *testing.T) {
	for _, domain := range []string{"", "hub"} {
		ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true,
			JetStreamDomain: domain, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
		if err != nil {
			t.Fatal(err)
		}
		go ns.Start()
		if !ns.ReadyForConnections(10 * time.Second) {
			t.Fatal("nats-server not ready")
		}
		nc, err := nats.Connect(ns.ClientURL())
		if err != nil {
			t.Fatal(err)
		}
		js, _ := jetstream.New(nc)
		ctx := t.Context()
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "acks", Subjects: []string{"acks.>"},
			Storage: jetstream.MemoryStorage}); err != nil {
			t.Fatal(err)
		}
		msg := func(id string, expect string) *nats.Msg {
			m := &nats.Msg{Subject: "acks.a", Data: []byte("x"), Header: nats.Header{}}
			m.Header.Set(jetstream.MsgIDHeader, id)
			if expect != "" {
				m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, expect)
			}
			return m
		}
		cases := []struct {
			msg  *nats.Msg
			want pubAck
			err  bool
		}{
			{msg("1", ""), pubAck{seq: 1}, false},
			{msg("1", ""), pubAck{seq: 1, dup: true}, false},
			{msg("2", "1"), pubAck{seq: 2}, false},
			{msg("3", "1"), pubAck{}, true}, // wrong last subject sequence
		}
		for i, c := range cases {
			resp, err := nc.RequestMsg(c.msg, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			got, err := parseAck(resp.Data)
			t.Logf("domain %q, ack %s: %+v, %v", domain, resp.Data, got, err)
			if c.err {
				if !wrongLastSeq(err) {
					t.Errorf("case %d: %s: err %v, want wrong last sequence", i, resp.Data, err)
				}
				if _, ok := quickAck(resp.Data); ok {
					t.Errorf("case %d: quick reading accepted an error %s", i, resp.Data)
				}
				continue
			}
			if err != nil || got != c.want {
				t.Errorf("case %d: %s: got %+v, %v; want %+v", i, resp.Data, got, err, c.want)
			}
			if _, ok := quickAck(resp.Data); !ok {
				t.Errorf("case %d: the server's template %s was not read quickly", i, resp.Data)
			}
			var j jetstream.PubAck
			if err := json.Unmarshal(resp.Data, &j); err != nil || j.Sequence != got.seq || j.Duplicate != got.dup {
				t.Errorf("case %d: JSON reads %s as %+v (%v), quick reading as %+v", i, resp.Data, j, err, got)
			}
		}
		nc.Close()
		ns.Shutdown()
		ns.WaitForShutdown()
	}
	for _, c := range []struct {
		in   string
		want pubAck
		err  bool
	}{
		{`{"stream":"s","seq":7,"val":"x"}`, pubAck{seq: 7}, false}, // unknown field: JSON
		{`{"stream":"s", "seq":7}`, pubAck{seq: 7}, false},
		{`{"stream":"s","seq":7,"duplicate":false}`, pubAck{seq: 7}, false},
		{`{"stream":"s","seq":18446744073709551616}`, pubAck{}, true}, // overflows
		{`{"stream":"s","seq":}`, pubAck{}, true},
		{`{"stream":"","seq":3}`, pubAck{}, true},
		{`{"error":{"code":503,"err_code":10077,"description":"x"},"stream":"s","seq":1}`, pubAck{}, true},
		{``, pubAck{}, true},
		{`{"stream":"s","seq":3`, pubAck{}, true},
	} {
		got, err := parseAck([]byte(c.in))
		if (err != nil) != c.err || got != c.want {
			t.Errorf("%s: got %+v, %v; want %+v, error %v", c.in, got, err, c.want, c.err)
		}
	}
	var ae *jetstream.APIError
	if _, err := parseAck([]byte(`{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 1"}}`)); !errors.As(err, &ae) || !wrongLastSeq(err) {
		t.Errorf("error ack: %v", err)
	}
}
