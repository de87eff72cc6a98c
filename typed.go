package wspool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
)

// ErrDecode wraps every error of a typed handler's decode step.
var ErrDecode = errors.New("wspool: decode")

// DecodeError reports a message a typed handler could not decode. It reaches
// WithOnError inside a *HandlerError (errors.As finds it), is counted in
// Stats.HandlerErrors, and the feed goes on with the next message.
type DecodeError struct {
	Type MessageType
	Size int // bytes in the message
	Err  error
}

// Error describes the message and the codec's error.
func (e *DecodeError) Error() string {
	return fmt.Sprintf("wspool: decode %s message of %d bytes: %v", e.Type, e.Size, e.Err)
}

// Unwrap returns ErrDecode and the codec's error.
func (e *DecodeError) Unwrap() []error { return []error{ErrDecode, e.Err} }

// Decoded adapts a handler of decoded values into a Handler: each message is
// decoded into a fresh T by decode (any codec: MessagePack, Protobuf, CBOR),
// then passed to h. A decode error is reported as a *DecodeError and the
// message skipped. decode must not keep data past its return (the buffer is
// reused), though the decoded value may own copies.
func Decoded[T any](decode func(data []byte, v *T) error, h func(ctx context.Context, v T) error) Handler {
	return func(ctx context.Context, m Message) error {
		var v T
		if err := decode(m.Data, &v); err != nil {
			return &DecodeError{Type: m.Type, Size: len(m.Data), Err: err}
		}
		return h(ctx, v)
	}
}

// JSON adapts a handler of JSON-decoded values (encoding/json) into a Handler.
func JSON[T any](h func(ctx context.Context, v T) error) Handler {
	return Decoded(func(data []byte, v *T) error { return json.Unmarshal(data, v) }, h)
}
