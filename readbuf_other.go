//go:build !unix

package wspool

const pooledReadsSupported = false

func (t *trackedConn) enablePooledReads() {}

func (t *trackedConn) pooledRead(p []byte) (int, error) { return t.Conn.Read(p) }
