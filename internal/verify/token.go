package verify

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/url"
	"strings"
)

// This file is the weaker alternative to a signature the vendor documents:
// a token query parameter on the endpoint URL.

// SplitToken splits rawQuery into the raw values of its token parameters
// and the rest of the query: the other parameters in order, byte for byte.
// Everything that must not show or forward the token (the handler's
// rewrite, a stored delivery's URI, the command's output) goes through it.
func SplitToken(rawQuery string) (rest string, tokens []string) {
	var kept strings.Builder
	for q := rawQuery; q != ""; {
		param := q
		if i := strings.IndexByte(q, '&'); i >= 0 {
			param, q = q[:i], q[i+1:]
		} else {
			q = ""
		}
		key, val, _ := strings.Cut(param, "=")
		if k, err := url.QueryUnescape(key); err == nil && k == "token" {
			tokens = append(tokens, val)
			continue
		}
		if kept.Len() > 0 {
			kept.WriteByte('&')
		}
		kept.WriteString(param)
	}
	return kept.String(), tokens
}

// CheckToken checks the token query parameter of rawQuery. It returns the
// query with every token parameter removed and the other parameters kept in
// order, byte for byte. Exactly one token is accepted; it is compared
// through SHA-256 digests in constant time, so its length does not leak.
func (v *Verifier) CheckToken(rawQuery string) (string, error) {
	stripped, tokens := SplitToken(rawQuery)
	switch {
	case len(tokens) == 0:
		return stripped, Fail(ReasonTokenMissing, "no token query parameter")
	case len(tokens) > 1:
		return stripped, Fail(ReasonTokenDuplicate, "%d token query parameters", len(tokens))
	}
	tok, err := url.QueryUnescape(tokens[0])
	if err != nil {
		return stripped, Fail(ReasonTokenMismatch, "token is not valid query encoding")
	}
	sum := sha256.Sum256([]byte(tok))
	if !v.hasToken || subtle.ConstantTimeCompare(sum[:], v.token[:]) != 1 {
		return stripped, Fail(ReasonTokenMismatch, "token does not match")
	}
	return stripped, nil
}
