package wspool_test

// Fuzz targets (go test -fuzz):
//
//   - FuzzHostileServer: the fuzzer's bytes are what a server sends after a
//     valid handshake. The feed must not panic or hang, must end the
//     connection with a reported error, and must deliver exactly the data
//     messages an RFC 6455 client delivers from those bytes (rawws.DataMessages).
//   - FuzzRetryAfter: a 503 handshake answer with a fuzzed Retry-After
//     header. The wait before the next attempt must be within
//     [0, WithMaxRetryAfter] (the backoff here is a few ms), and honour the
//     header: delay-seconds or an HTTP date, capped.
//
// (The feed name's redaction is fuzzed where it is made: FuzzURL in
// internal/redact.) Their seed corpora are in testdata/fuzz/<FuzzName>/; plain `go test` runs
// the seeds as regression tests.

import (
	"bytes"
	"context"
	"errors"
	"math/big"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/rawws"
)

// fuzzReadLimit is small so that inputs reach the read limit too.
const fuzzReadLimit = 4096

func FuzzHostileServer(f *testing.F) {
	for _, seed := range [][]byte{
		nil,
		rawws.Text("hello").Bytes(),
		append(rawws.Text("a").Bytes(), rawws.Close(1000, "bye").Bytes()...),
		append(rawws.Frame{Opcode: rawws.OpText, Payload: []byte("frag")}.Bytes(),
			append(rawws.Ping([]byte("p")).Bytes(), rawws.Frame{Fin: true, Opcode: rawws.OpContinuation, Payload: []byte("ment")}.Bytes()...)...),
		rawws.Frame{Fin: true, RSV: rawws.RSV1, Opcode: rawws.OpText, Payload: []byte("x")}.Bytes(),
		rawws.Frame{Fin: true, Opcode: 0xB}.Bytes(),
		rawws.Frame{Opcode: rawws.OpPing}.Bytes(),
		rawws.Ping(bytes.Repeat([]byte("p"), 126)).Bytes(),
		rawws.Close(1005, "").Bytes(),
		rawws.Close(1000, "\xff").Bytes(),
		rawws.Binary(bytes.Repeat([]byte("b"), fuzzReadLimit+1)).Bytes(),
		rawws.Frame{Fin: true, Opcode: rawws.OpBinary, LieLength: true, Length: 1 << 63}.Bytes(),
		rawws.Frame{Fin: true, Opcode: rawws.OpText, Payload: []byte("abc"), LieLength: true, Length: 10}.Bytes(),
		rawws.Frame{Fin: true, Opcode: rawws.OpText, Payload: []byte("x"), Masked: true}.Bytes(),
		rawws.Text("\xff\xfe").Bytes(),
		{0x81, 0x7e, 0x00, 0x03, 'a', 'b', 'c'}, // non-minimal length
	} {
		f.Add(seed)
	}

	var payloads sync.Map // request path -> []byte
	srv, err := rawws.New(func(ctx context.Context, c *rawws.Conn) {
		req, err := c.Handshake()
		if err != nil {
			return
		}
		p, ok := payloads.Load(req.URL.Path)
		if !ok {
			return
		}
		if _, err := c.Write(p.([]byte)); err != nil {
			return
		}
		// FIN after the payload: the client reads everything, then EOF.
		_ = c.CloseWrite()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_ = c.Drain()
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(srv.Close)
	var seq atomic.Int64

	f.Fuzz(func(t *testing.T, data []byte) {
		path := "/" + strconv.FormatInt(seq.Add(1), 10)
		payloads.Store(path, data)
		defer payloads.Delete(path)

		var got []rawws.Message
		c, err := wspool.NewClient(srv.URL(path), func(_ context.Context, m wspool.Message) error {
			got = append(got, rawws.Message{Opcode: uint8(m.Type), Data: bytes.Clone(m.Data)})
			return nil
		}, wspool.WithMaxAttempts(1), wspool.WithHealthyWhen(wspool.HealthMinUptime), wspool.WithReadLimit(fuzzReadLimit),
			wspool.WithHandshakeTimeout(2*time.Second), wspool.WithCloseTimeout(200*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		const bound = 3 * time.Second
		ctx, cancel := context.WithTimeout(context.Background(), bound)
		defer cancel()
		runErr := c.Run(ctx)
		if ctx.Err() != nil {
			t.Fatalf("feed still running after %v (Run returned %v, stats %+v)", bound, runErr, c.Stats())
		}
		if !errors.Is(runErr, wspool.ErrMaxAttempts) {
			t.Fatalf("Run: %v, want the connection's end reported (ErrMaxAttempts wrapping it)", runErr)
		}
		st := c.Stats()
		if st.LastError == nil || st.Connects != 1 || st.HandlerErrors != 0 {
			t.Fatalf("stats: %+v", st)
		}
		want, why := rawws.DataMessages(data, fuzzReadLimit)
		if len(got) != len(want) {
			t.Fatalf("delivered %d messages, want %d (model: %s; feed: %v)\ngot  %q\nwant %q", len(got), len(want), why, runErr, got, want)
		}
		for i := range got {
			if got[i].Opcode != want[i].Opcode || !bytes.Equal(got[i].Data, want[i].Data) {
				t.Fatalf("message %d: got %d %q, want %d %q", i, got[i].Opcode, got[i].Data, want[i].Opcode, want[i].Data)
			}
		}
	})
}

func FuzzRetryAfter(f *testing.F) {
	for _, seed := range []string{
		"", "0", "1", "120", "-5", "+5", " 30 ", "1.5", "abc", "007",
		"600", "601", "86400", "9223372036",
		"Wed, 21 Oct 2015 07:28:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994",
	} {
		f.Add(seed)
	}
	const maxRetryAfter = time.Hour

	var values sync.Map // request path -> Retry-After value
	srv, err := rawws.New(func(ctx context.Context, c *rawws.Conn) {
		req, err := c.ReadRequest()
		if err != nil {
			return
		}
		v, _ := values.Load(req.URL.Path)
		s, _ := v.(string)
		_, _ = c.WriteString(rawws.Response(http.StatusServiceUnavailable, "Retry-After: "+s, "Content-Length: 0"))
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(srv.Close)
	var seq atomic.Int64

	f.Fuzz(func(t *testing.T, v string) {
		if strings.ContainsAny(v, "\r\n") {
			return // would end the header line: another header, not another value
		}
		path := "/" + strconv.FormatInt(seq.Add(1), 10)
		values.Store(path, v)
		defer values.Delete(path)

		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		var mu sync.Mutex
		var first *wspool.StateChange
		c, err := wspool.NewClient(srv.URL(path), nil,
			wspool.WithBackoff(time.Millisecond, 2*time.Millisecond),
			wspool.WithMaxRetryAfter(maxRetryAfter),
			wspool.WithOnStateChange(func(sc wspool.StateChange) {
				if sc.To != wspool.StateBackingOff {
					return
				}
				mu.Lock()
				if first == nil {
					first = &sc
				}
				mu.Unlock()
				cancel() // the wait itself is not needed
			}))
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		if err := c.Run(ctx); err != nil {
			t.Fatalf("Run: %v", err)
		}
		mu.Lock()
		defer mu.Unlock()
		if first == nil {
			t.Fatalf("no BackingOff within 3s: %+v", c.Stats())
		}
		wait := first.Wait
		if wait < 0 || wait > maxRetryAfter {
			t.Fatalf("Retry-After %q: wait %v, want within [0, %v] (cause %v)", v, wait, maxRetryAfter, first.Err)
		}
		var he *wspool.HandshakeError
		if !errors.As(first.Err, &he) {
			return // the header broke the response; the wait is the backoff
		}
		if he.RetryAfter < 0 {
			t.Fatalf("Retry-After %q: HandshakeError.RetryAfter = %v, negative", v, he.RetryAfter)
		}
		// What the header asks for, capped.
		hv := strings.Trim(v, " \t")
		const slack = 2 * time.Second // HTTP dates have a resolution of 1s
		if isDigits(hv) {
			n, _ := new(big.Int).SetString(hv, 10)
			want := maxRetryAfter
			if n.Cmp(big.NewInt(int64(maxRetryAfter/time.Second))) < 0 {
				want = time.Duration(n.Int64()) * time.Second
			}
			if wait < want {
				t.Fatalf("Retry-After %q: wait %v, want at least %v (HandshakeError.RetryAfter %v)", v, wait, want, he.RetryAfter)
			}
		} else if at, err := http.ParseTime(hv); err == nil {
			want := min(max(at.Sub(now), 0), maxRetryAfter)
			if wait < want-slack {
				t.Fatalf("Retry-After %q: wait %v, want about %v (HandshakeError.RetryAfter %v)", v, wait, want, he.RetryAfter)
			}
		}
	})
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}
