package verify

import (
	"encoding/binary"
	"unicode"
	"unicode/utf8"
	"unsafe"
)

// This file parses a ReReady payload in one pass over the body: it checks
// that the whole body is valid JSON and picks out the known fields, without
// reflection and with one allocation for all the field strings.

// The seven states ReReady documents.
const (
	StatePendingOutboundShipment         = "pending_outbound_shipment"
	StatePendingOutboundShipmentDelivery = "pending_outbound_shipment_delivery"
	StatePendingReturnShipment           = "pending_return_shipment"
	StatePendingReturnShipmentDelivery   = "pending_return_shipment_delivery"
	StateFailed                          = "failed"
	StateNotReturned                     = "not_returned"
	StateComplete                        = "complete"
)

// States lists the documented states in the vendor's order.
var States = []string{
	StatePendingOutboundShipment,
	StatePendingOutboundShipmentDelivery,
	StatePendingReturnShipment,
	StatePendingReturnShipmentDelivery,
	StateFailed,
	StateNotReturned,
	StateComplete,
}

// KnownState reports whether s is one of the documented states.
func KnownState(s string) bool { return StateIndex(s) < len(States) }

// StateIndex is s's position in States, or len(States) for an unknown one.
func StateIndex(s string) int {
	for i, k := range States {
		if s == k {
			return i
		}
	}
	return len(States)
}

// Event is the part of a ReReady payload the gateway passes on. Optional
// fields that were null or absent have their Has flag false.
type Event struct {
	DeviceReturnID  string
	State           string
	SerialNumber    string
	HasSerialNumber bool
	Test            bool
	TicketURL       string
	HasTicketURL    bool
	URL             string
	HasURL          bool
}

// maxDepth bounds nesting in a payload: the outermost value is level 1,
// and a body with more than maxDepth levels of arrays and objects is
// invalid JSON here.
const maxDepth = 256

// payload field indexes.
const (
	fDeviceReturnID = iota
	fState
	fSerialNumber
	fTicketURL
	fURL
	fTest
	numFields
)

var fieldNames = [numFields]string{"device_return_id", "state", "serial_number", "ticket_url", "url", "test"}

// span is the raw bytes of a JSON string between its quotes.
type span struct {
	start, end int
	escaped    bool
	set, null  bool
}

// ParsePayload validates body as JSON and extracts the event. Failures carry
// the payload_* reason codes; each names the field at fault.
func ParsePayload(body []byte) (Event, error) { return ParsePayloadInto(body, nil) }

// ParsePayloadInto is ParsePayload with the field strings decoded into
// scratch when they fit (the handler keeps it in its per-request state), so
// the usual payload needs no allocation of its own. The strings alias
// scratch: it must never be written again.
func ParsePayloadInto(body, scratch []byte) (Event, error) {
	var ev Event
	s := scanner{b: body}
	s.ws()
	if s.i == len(s.b) {
		return ev, Fail(ReasonPayloadEmpty, "body is empty")
	}
	var (
		fields   [numFields]span
		fieldErr error
	)
	if c := s.b[s.i]; c != '{' {
		start := s.i
		err := s.value()
		if err == nil {
			if s.ws(); s.i == len(s.b) {
				return ev, Fail(ReasonPayloadWrongType, "payload is not a JSON object")
			}
			err = s.syntax("end of input")
		}
		if s.i == start { // not even the start of a JSON value
			return ev, Fail(ReasonPayloadInvalidJSON, "body is not a JSON object: it starts with %q", c)
		}
		return ev, Fail(ReasonPayloadInvalidJSON, "body is not a JSON object, nor valid JSON: %s", err.(*Failure).Msg)
	}
	s.i++
	s.depth = 1 // the payload object is the outermost level
	s.ws()
	if s.peek() == '}' {
		s.i++
	} else {
		for {
			if s.peek() != '"' {
				return ev, s.syntax("object key")
			}
			s.i++
			ks, err := s.str()
			if err != nil {
				return ev, err
			}
			s.ws()
			if s.peek() != ':' {
				return ev, s.syntax("':'")
			}
			s.i++
			s.ws()
			f := s.field(ks)
			if f < 0 {
				if err := s.value(); err != nil {
					return ev, err
				}
			} else if err := s.known(f, &fields[f], &ev); err != nil {
				// A syntax error wins; a field error is reported once the
				// whole body is known to be JSON.
				if ReasonOf(err) == ReasonPayloadInvalidJSON {
					return ev, err
				}
				if fieldErr == nil {
					fieldErr = err
				}
			}
			s.ws()
			c := s.peek()
			s.i++
			if c == '}' {
				break
			}
			if c != ',' {
				s.i--
				return ev, s.syntax("',' or '}'")
			}
			s.ws()
		}
	}
	s.ws()
	if s.i != len(s.b) {
		return ev, s.syntax("end of input")
	}
	if fieldErr != nil {
		return ev, fieldErr
	}
	for _, f := range []int{fDeviceReturnID, fState} {
		if !fields[f].set {
			return ev, Fail(ReasonPayloadMissing, "%s is missing", fieldNames[f])
		}
		if fields[f].null {
			return ev, Fail(ReasonPayloadWrongType, "%s is null; want a string", fieldNames[f])
		}
		if fields[f].start == fields[f].end {
			return ev, Fail(ReasonPayloadMissing, "%s is empty", fieldNames[f])
		}
	}
	return ev, s.strings(&fields, &ev, scratch)
}

// strings decodes the string fields into one allocation and checks each for
// control characters and invalid UTF-8, since they become header values.
func (s *scanner) strings(fields *[numFields]span, ev *Event, scratch []byte) error {
	n := 0
	for f := 0; f < fTest; f++ {
		if fields[f].set && !fields[f].null {
			n += fields[f].end - fields[f].start
		}
	}
	if n == 0 {
		return nil
	}
	buf := scratch[:0]
	if cap(buf) < n {
		buf = make([]byte, 0, n)
	}
	var bounds [fTest][2]int
	for f := 0; f < fTest; f++ {
		sp := fields[f]
		if !sp.set || sp.null {
			continue
		}
		from := len(buf)
		raw := s.b[sp.start:sp.end]
		if sp.escaped {
			var lone rune
			if buf, lone = unescape(buf, raw); lone != 0 {
				// It has no UTF-8 form (RFC 7493 forbids it), and U+FFFD
				// in its place would make the header say what the
				// signed body does not.
				return Fail(ReasonPayloadBadString, "%s contains the unpaired UTF-16 surrogate \\u%04x", fieldNames[f], lone)
			}
		} else {
			buf = append(buf, raw...)
		}
		if err := headerSafe(fieldNames[f], buf[from:]); err != nil {
			return err
		}
		bounds[f] = [2]int{from, len(buf)}
	}
	all := unsafe.String(unsafe.SliceData(buf), len(buf)) // buf is never written again
	get := func(f int) string { return all[bounds[f][0]:bounds[f][1]] }
	ev.DeviceReturnID = get(fDeviceReturnID)
	ev.State = internState(get(fState))
	ev.SerialNumber, ev.HasSerialNumber = get(fSerialNumber), fields[fSerialNumber].set && !fields[fSerialNumber].null
	ev.TicketURL, ev.HasTicketURL = get(fTicketURL), fields[fTicketURL].set && !fields[fTicketURL].null
	ev.URL, ev.HasURL = get(fURL), fields[fURL].set && !fields[fURL].null
	return nil
}

func internState(s string) string {
	if i := StateIndex(s); i < len(States) {
		return States[i]
	}
	return s
}

// headerSafe rejects invalid UTF-8 and any Unicode control character (Cc:
// U+0000-U+001F, U+007F-U+009F), which covers CR, LF and NUL.
func headerSafe(name string, b []byte) error {
	for i := 0; i < len(b); {
		// Skip eight plain printable ASCII bytes at a time.
		for i+8 <= len(b) && plainASCII(binary.LittleEndian.Uint64(b[i:])) {
			i += 8
		}
		if i >= len(b) {
			break
		}
		c := b[i]
		if c < utf8.RuneSelf {
			if c < 0x20 || c == 0x7f {
				return Fail(ReasonPayloadBadString, "%s contains control character %U", name, rune(c))
			}
			i++
			continue
		}
		r, size := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && size == 1 {
			return Fail(ReasonPayloadBadString, "%s is not valid UTF-8", name)
		}
		if unicode.IsControl(r) {
			return Fail(ReasonPayloadBadString, "%s contains control character %U", name, r)
		}
		i += size
	}
	return nil
}

type scanner struct {
	b     []byte
	i     int
	depth int
}

func (s *scanner) peek() byte {
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *scanner) syntax(want string) error {
	if s.i >= len(s.b) {
		return Fail(ReasonPayloadInvalidJSON, "unexpected end of JSON; want %s", want)
	}
	return Fail(ReasonPayloadInvalidJSON, "unexpected %q at offset %d; want %s", s.b[s.i], s.i, want)
}

// field returns the known field a key names, or -1.
func (s *scanner) field(k span) int {
	key := s.b[k.start:k.end]
	// The longest name, every byte written as \uXXXX, is 6 x 16 bytes.
	var tmp [6 * len("device_return_id")]byte
	if k.escaped {
		if len(key) > len(tmp) {
			return -1
		}
		key, _ = unescape(tmp[:0], key)
	}
	for f, name := range fieldNames {
		if string(key) == name {
			return f
		}
	}
	return -1
}

// known parses the value of a known field.
func (s *scanner) known(f int, sp *span, ev *Event) error {
	if sp.set {
		if err := s.value(); err != nil {
			return err
		}
		return Fail(ReasonPayloadDuplicate, "%s appears more than once", fieldNames[f])
	}
	c := s.peek()
	if f == fTest {
		switch c {
		case 't':
			ev.Test = true
			sp.set = true
			return s.literal("true")
		case 'f':
			sp.set = true
			return s.literal("false")
		}
		if err := s.value(); err != nil {
			return err
		}
		return Fail(ReasonPayloadWrongType, "test is not a boolean")
	}
	switch c {
	case '"':
		s.i++
		v, err := s.str()
		if err != nil {
			return err
		}
		v.set = true
		*sp = v
		return nil
	case 'n':
		sp.set, sp.null = true, true
		return s.literal("null")
	}
	if err := s.value(); err != nil {
		return err
	}
	return Fail(ReasonPayloadWrongType, "%s is not a string", fieldNames[f])
}

func (s *scanner) literal(lit string) error {
	if len(s.b)-s.i < len(lit) || string(s.b[s.i:s.i+len(lit)]) != lit {
		return s.syntax(lit)
	}
	s.i += len(lit)
	return nil
}

// str scans a string whose opening quote has been consumed. Plain runs are
// skipped eight bytes at a time: a payload's bulk is string content.
func (s *scanner) str() (span, error) {
	sp := span{start: s.i}
	b := s.b
	i := s.i
	for {
		for i+8 <= len(b) && !hasSpecial(binary.LittleEndian.Uint64(b[i:])) {
			i += 8
		}
		if i >= len(b) {
			break
		}
		c := b[i]
		switch {
		case c == '"':
			sp.end = i
			s.i = i + 1
			return sp, nil
		case c == '\\':
			sp.escaped = true
			if i+1 >= len(b) {
				s.i = len(b)
				return sp, s.syntax("escape")
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(b) || !isHex(string(b[i+2:i+6])) {
					s.i = i
					return sp, Fail(ReasonPayloadInvalidJSON, "bad \\u escape at offset %d", i)
				}
				i += 6
			default:
				s.i = i
				return sp, Fail(ReasonPayloadInvalidJSON, "bad escape at offset %d", i)
			}
		case c < 0x20:
			s.i = i
			return sp, Fail(ReasonPayloadInvalidJSON, "raw control character %U in string at offset %d", rune(c), i)
		default:
			i++
		}
	}
	s.i = len(b)
	return sp, s.syntax("closing '\"'")
}

// plainASCII reports whether all eight bytes in w are printable ASCII
// (0x20-0x7e).
func plainASCII(w uint64) bool {
	const lo, hi = 0x0101010101010101, 0x8080808080808080
	less20 := (w - lo*0x20) & ^w & hi
	del := (w ^ lo*0x7f - lo) & ^(w ^ lo*0x7f) & hi
	return w&hi|less20|del == 0
}

// hasSpecial reports whether any of the eight bytes in w is '"', '\\' or
// below 0x20: the bytes that end a plain run inside a JSON string. (The
// classic SWAR tests; a match is exact as to whether one exists.)
func hasSpecial(w uint64) bool {
	const lo, hi = 0x0101010101010101, 0x8080808080808080
	zero := func(v uint64) uint64 { return (v - lo) & ^v & hi }
	less20 := (w - lo*0x20) & ^w & hi
	return less20|zero(w^(lo*'"'))|zero(w^(lo*'\\')) != 0
}

// value skips any JSON value.
func (s *scanner) value() error {
	switch c := s.peek(); {
	case c == '"':
		s.i++
		_, err := s.str()
		return err
	case c == '{' || c == '[':
		return s.container(c)
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	case c == '-' || '0' <= c && c <= '9':
		return s.number()
	}
	return s.syntax("a value")
}

func (s *scanner) container(open byte) error {
	s.depth++
	if s.depth > maxDepth {
		return Fail(ReasonPayloadInvalidJSON, "nesting deeper than %d levels", maxDepth)
	}
	close := byte('}')
	if open == '[' {
		close = ']'
	}
	s.i++
	s.ws()
	if s.peek() == close {
		s.i++
		s.depth--
		return nil
	}
	for {
		if open == '{' {
			if s.peek() != '"' {
				return s.syntax("object key")
			}
			s.i++
			if _, err := s.str(); err != nil {
				return err
			}
			s.ws()
			if s.peek() != ':' {
				return s.syntax("':'")
			}
			s.i++
			s.ws()
		}
		if err := s.value(); err != nil {
			return err
		}
		s.ws()
		switch s.peek() {
		case ',':
			s.i++
			s.ws()
		case close:
			s.i++
			s.depth--
			return nil
		default:
			return s.syntax("',' or '" + string(close) + "'")
		}
	}
}

func (s *scanner) number() error {
	b, i := s.b, s.i
	digits := func() int {
		n := 0
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
			n++
		}
		return n
	}
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case digits() == 0:
		s.i = i
		return s.syntax("digit")
	}
	if i < len(b) && b[i] == '.' {
		i++
		if digits() == 0 {
			s.i = i
			return s.syntax("digit")
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if digits() == 0 {
			s.i = i
			return s.syntax("digit")
		}
	}
	s.i = i
	return nil
}

// unescape appends the decoded form of a validated JSON string body to dst.
// Lone surrogates become U+FFFD, as encoding/json does; lone is the first
// of them, or 0 if there is none.
func unescape(dst, raw []byte) (out []byte, lone rune) {
	for i := 0; i < len(raw); {
		c := raw[i]
		if c != '\\' {
			dst = append(dst, c)
			i++
			continue
		}
		switch raw[i+1] {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r := hex4(raw[i+2 : i+6])
			i += 6
			if utf16IsSurrogate(r) {
				r2 := rune(-1)
				if i+6 <= len(raw) && raw[i] == '\\' && raw[i+1] == 'u' {
					r2 = hex4(raw[i+2 : i+6])
				}
				if dec := utf16Decode(r, r2); dec != utf8.RuneError {
					r = dec
					i += 6
				} else {
					if lone == 0 {
						lone = r
					}
					r = utf8.RuneError
				}
			}
			dst = utf8.AppendRune(dst, r)
			continue
		default: // '"', '\\', '/'
			dst = append(dst, raw[i+1])
		}
		i += 2
	}
	return dst, lone
}

func hex4(b []byte) rune {
	var r rune
	for _, c := range b {
		v, _ := fromHex(c)
		r = r<<4 | rune(v)
	}
	return r
}

func utf16IsSurrogate(r rune) bool { return 0xd800 <= r && r < 0xe000 }

func utf16Decode(r1, r2 rune) rune {
	if 0xd800 <= r1 && r1 < 0xdc00 && 0xdc00 <= r2 && r2 < 0xe000 {
		return (r1-0xd800)<<10 | (r2 - 0xdc00) + 0x10000
	}
	return utf8.RuneError
}
