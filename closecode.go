package wspool

import (
	"errors"
	"strconv"

	"github.com/gorilla/websocket"
)

// CloseCode is a WebSocket close status code (RFC 6455 §7.4).
type CloseCode int

// The close codes of RFC 6455 §7.4.1 and the IANA registry, and CloseCodeNone.
const (
	// CloseCodeNone is what CloseStatus returns for an error that carries no
	// close frame.
	CloseCodeNone               CloseCode = -1
	CloseCodeNormal             CloseCode = 1000
	CloseCodeGoingAway          CloseCode = 1001
	CloseCodeProtocolError      CloseCode = 1002
	CloseCodeUnsupportedData    CloseCode = 1003
	CloseCodeNoStatus           CloseCode = 1005 // never sent: the close frame had no code
	CloseCodeAbnormal           CloseCode = 1006 // never sent: the connection ended without a close frame
	CloseCodeInvalidPayload     CloseCode = 1007 // e.g. invalid UTF-8 in a text message
	CloseCodePolicyViolation    CloseCode = 1008 // exchanges: "too many requests"; penalises the admission key
	CloseCodeMessageTooBig      CloseCode = 1009
	CloseCodeMandatoryExtension CloseCode = 1010
	CloseCodeInternalError      CloseCode = 1011
	CloseCodeServiceRestart     CloseCode = 1012 // retried soon (within the initial backoff)
	CloseCodeTryAgainLater      CloseCode = 1013 // penalises the admission key
	CloseCodeBadGateway         CloseCode = 1014
	CloseCodeTLSHandshake       CloseCode = 1015 // never sent
)

var closeCodeNames = map[CloseCode]string{
	CloseCodeNone: "none", CloseCodeNormal: "normal closure", CloseCodeGoingAway: "going away",
	CloseCodeProtocolError: "protocol error", CloseCodeUnsupportedData: "unsupported data",
	CloseCodeNoStatus: "no status", CloseCodeAbnormal: "abnormal closure",
	CloseCodeInvalidPayload: "invalid payload data", CloseCodePolicyViolation: "policy violation",
	CloseCodeMessageTooBig: "message too big", CloseCodeMandatoryExtension: "mandatory extension",
	CloseCodeInternalError: "internal error", CloseCodeServiceRestart: "service restart",
	CloseCodeTryAgainLater: "try again later", CloseCodeBadGateway: "bad gateway",
	CloseCodeTLSHandshake: "TLS handshake",
}

// String returns the code and its RFC name, e.g. "1008 (policy violation)".
func (c CloseCode) String() string {
	if c == CloseCodeNone {
		return "none"
	}
	s := strconv.Itoa(int(c))
	if n, ok := closeCodeNames[c]; ok {
		return s + " (" + n + ")"
	}
	return s
}

// CloseStatus returns the close code carried by err (a close frame from the
// peer anywhere in its chain, found with errors.As, unlike gorilla's
// IsCloseError, which wrapping defeats), or CloseCodeNone if there is none.
func CloseStatus(err error) CloseCode {
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		return CloseCode(ce.Code)
	}
	return CloseCodeNone
}
