//go:build !unix

package wspool

import "errors"

const pooledReadsSupported = false

func (t *trackedConn) enablePooledReads() {}

func (t *trackedConn) pooledRead(p []byte) (int, error) { return t.Conn.Read(p) }

func (t *trackedConn) fill(int) error {
	return errors.New("wspool: internal: pooled reads unsupported")
}
