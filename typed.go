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
// then passed to h. A message that Sequence.Position already decoded into a
// *T (Message.Decoded, see DecodedPosition) is not decoded again. A decode
// error is reported as a *DecodeError and the message skipped. decode must
// not keep data past its return (the buffer is reused), though the decoded
// value may own copies.
func Decoded[T any](decode func(data []byte, v *T) error, h func(ctx context.Context, v T) error) Handler {
	return func(ctx context.Context, m Message) error {
		if p, ok := m.Decoded.(*T); ok && p != nil {
			return h(ctx, *p)
		}
		var v T
		if err := decode(m.Data, &v); err != nil {
			return &DecodeError{Type: m.Type, Size: len(m.Data), Err: err}
		}
		return h(ctx, v)
	}
}

// JSON adapts a handler of JSON-decoded values (encoding/json) into a Handler.
func JSON[T any](h func(ctx context.Context, v T) error) Handler {
	return Decoded(jsonDecode[T], h)
}

// DecodedPosition returns a Sequence.Position that decodes each message once
// into a fresh T with decode, reads its place with pos, and hands the *T on
// in Message.Decoded, where a Decoded or JSON handler of the same T takes it
// instead of decoding again. A message that does not decode, or for which
// pos returns false, is unnumbered (delivered as it is; the handler then
// reports its decode error).
func DecodedPosition[T any](decode func(data []byte, v *T) error, pos func(v *T) (Position, bool)) func(Message) (Position, bool) {
	return func(m Message) (Position, bool) {
		v := new(T)
		if decode(m.Data, v) != nil {
			return Position{}, false
		}
		p, ok := pos(v)
		p.Decoded = v
		return p, ok
	}
}

// JSONPosition is DecodedPosition with encoding/json.
func JSONPosition[T any](pos func(v *T) (Position, bool)) func(Message) (Position, bool) {
	return DecodedPosition(jsonDecode[T], pos)
}

func jsonDecode[T any](data []byte, v *T) error { return json.Unmarshal(data, v) }
