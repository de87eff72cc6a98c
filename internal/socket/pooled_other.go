//go:build !unix

package socket

import "errors"

const PooledReadsSupported = false

func (t *Conn) enablePooledReads() {}

func (t *Conn) pooledRead(p []byte) (int, error) { return t.Conn.Read(p) }

func (t *Conn) fill(int) error {
	return errors.New("wspool: internal: pooled reads unsupported")
}
