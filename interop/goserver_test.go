//go:build linux

package interop

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// goServer is a gorilla WebSocket server on 127.0.0.1 speaking the peers'
// JSON protocol (subscribe, echo, close): the backend behind nginx, the
// target behind tinyproxy, and the wss server of the TLS tests.
type goServer struct {
	addr     string
	tls      bool
	srv      *http.Server
	upgrades atomic.Int64 // connections upgraded
	requests atomic.Int64 // HTTP requests that reached the handler

	mu    sync.Mutex
	conns map[*websocket.Conn]struct{}
}

// startGoServer starts a server, with TLS if cfg is not nil, and stops it
// (open connections included) when the test ends.
func startGoServer(t testing.TB, cfg *tls.Config) *goServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &goServer{addr: ln.Addr().String(), tls: cfg != nil, conns: map[*websocket.Conn]struct{}{}}
	if cfg != nil {
		ln = tls.NewListener(ln, cfg)
	}
	up := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	s.srv = &http.Server{
		ReadHeaderTimeout: 10 * time.Second,
		// TLS handshakes the tests make fail on purpose are logged here.
		ErrorLog: log.New(io.Discard, "", 0),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s.requests.Add(1)
			c, err := up.Upgrade(w, r, nil)
			if err != nil {
				return
			}
			s.serve(c, int(s.upgrades.Add(1)))
		}),
	}
	go func() { _ = s.srv.Serve(ln) }()
	t.Cleanup(func() {
		_ = s.srv.Close()
		s.mu.Lock()
		defer s.mu.Unlock()
		for c := range s.conns {
			_ = c.Close()
		}
	})
	return s
}

// url is ws:// or wss:// to host (default 127.0.0.1) at the server's port.
func (s *goServer) url(host string) string {
	_, port, _ := net.SplitHostPort(s.addr)
	if host == "" {
		host = "127.0.0.1"
	}
	scheme := "ws"
	if s.tls {
		scheme = "wss"
	}
	return scheme + "://" + net.JoinHostPort(host, port) + "/feed"
}

func (s *goServer) port() string {
	_, port, _ := net.SplitHostPort(s.addr)
	return port
}

// serve answers one connection's commands until it ends. Only this goroutine
// writes; gorilla's default ping handler answers pings while it reads.
func (s *goServer) serve(c *websocket.Conn, conn int) {
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		_ = c.Close()
	}()
	pid := os.Getpid()
	reply := func(m msg) error {
		m.Conn, m.PID = conn, pid
		return c.WriteJSON(m)
	}
	for {
		_, data, err := c.ReadMessage()
		if err != nil {
			return
		}
		var cmd struct {
			Op     string `json:"op"`
			Topic  string `json:"topic"`
			Count  int    `json:"count"`
			Data   string `json:"data"`
			Code   int    `json:"code"`
			Reason string `json:"reason"`
		}
		if json.Unmarshal(data, &cmd) != nil {
			return
		}
		switch cmd.Op {
		case "subscribe":
			for i := range cmd.Count {
				if reply(msg{Type: "tick", Topic: cmd.Topic, Seq: i}) != nil {
					return
				}
			}
		case "echo":
			if reply(msg{Type: "echo", Data: cmd.Data}) != nil {
				return
			}
		case "close":
			_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(cmd.Code, cmd.Reason), time.Now().Add(time.Second))
		}
	}
}

// testCA is a self-signed certificate authority made at test time.
type testCA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	pool    *x509.CertPool
	pemFile string // the CA certificate as PEM, for SSL_CERT_FILE
}

func newCA(t testing.TB) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "wspool interop test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &testCA{cert: cert, key: key, pool: x509.NewCertPool()}
	ca.pool.AddCert(cert)
	ca.pemFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca.pemFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return ca
}

// serverTLS returns a server configuration with a certificate the CA signed
// for 127.0.0.1, localhost and the given extra DNS names.
func (ca *testCA) serverTLS(t testing.TB, dnsNames ...string) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "wspool interop server"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     append([]string{"localhost"}, dnsNames...),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		MinVersion:   tls.VersionTLS12,
	}
}
