//go:build linux

package interop

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
)

// TestTLSSelfSignedCA: a wss server whose certificate a CA made at test time
// signed. Verification is on by default: without the CA the feed fails with
// an x509 error, reported in the state change and Stats.LastError, and keeps
// retrying (a TLS error is transient under DefaultPermanent). With the CA
// supplied through WithDialer it connects.
func TestTLSSelfSignedCA(t *testing.T) {
	ca := newCA(t)
	srv := startGoServer(t, ca.serverTLS(t))

	t.Run("default: verification on, x509 error, retried", func(t *testing.T) {
		f := newFeed(t, "tls", 3).run(srv.url(""))
		waitUntil(t, 10*time.Second, "3 failed attempts", func() bool { return f.c.Stats().Attempts >= 3 })
		st := f.c.Stats()
		_, changes, connects := f.snapshot()
		t.Logf("after %d attempts: state %v, last error: %v", st.Attempts, st.State, st.LastError)
		var unknownCA x509.UnknownAuthorityError
		if !errors.As(st.LastError, &unknownCA) {
			t.Errorf("Stats.LastError = %v (%T), want an x509.UnknownAuthorityError in its chain", st.LastError, st.LastError)
		}
		if !strings.Contains(errString(st.LastError), "x509: certificate signed by unknown authority") {
			t.Errorf("Stats.LastError %q does not say x509: certificate signed by unknown authority", errString(st.LastError))
		}
		if wspool.DefaultPermanent(st.LastError) {
			t.Errorf("DefaultPermanent(%v) = true, want transient", st.LastError)
		}
		var backoffs int
		for _, sc := range changes {
			if sc.To == wspool.StateClosed {
				t.Errorf("feed closed on a TLS error: %+v", sc)
			}
			if sc.To == wspool.StateBackingOff {
				backoffs++
				if !errors.As(sc.Err, &unknownCA) {
					t.Errorf("backing-off state change carries %v, want the x509 error", sc.Err)
				}
			}
		}
		if backoffs < 2 || connects != 0 || st.Connects != 0 {
			t.Errorf("%d backoffs, %d OnConnect runs, %d connects; want >= 2, 0, 0", backoffs, connects, st.Connects)
		}
		if n := srv.requests.Load(); n != 0 {
			t.Errorf("server saw %d HTTP requests over unverified TLS, want 0", n)
		}
		if st.State == wspool.StateClosed {
			t.Errorf("state %v, want still retrying", st.State)
		}
	})

	t.Run("CA via WithDialer: connects", func(t *testing.T) {
		d := &websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: ca.pool, MinVersion: tls.VersionTLS12}}
		f := newFeed(t, "tls", 20).run(srv.url(""), wspool.WithDialer(d))
		f.waitConnected(1, 10*time.Second)
		conn, _ := f.waitTicks(0)
		if m, _ := f.echo("over verified TLS"); m.Conn != conn {
			t.Errorf("echo on connection %d, want %d", m.Conn, conn)
		}
		if st := f.c.Stats(); st.LastError != nil || st.Attempts != 1 {
			t.Errorf("attempts %d, last error %v; want 1, nil", st.Attempts, st.LastError)
		}
	})
}
