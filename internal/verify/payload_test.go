package verify

import (
	"encoding/binary"
	"encoding/json"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
)

func TestParsePayloadVendorExample(t *testing.T) {
	body, err := os.ReadFile("testdata/vendor_example.json")
	if err != nil {
		t.Fatal(err)
	}
	ev, err := ParsePayload(body)
	if err != nil {
		t.Fatal(err)
	}
	want := Event{
		DeviceReturnID: "e025d043-c41d-4167-8bd3-24cc66345696",
		State:          StatePendingReturnShipment,
		URL:            "https://www.reready.co/device_returns/e025d043-c41d-4167-8bd3-24cc66345696",
		HasURL:         true,
	}
	if ev != want {
		t.Fatalf("got %+v\nwant %+v", ev, want)
	}
}

func TestParsePayload(t *testing.T) {
	tests := []struct {
		name   string
		body   string
		want   Event
		reason Reason
	}{
		{"minimal", `{"device_return_id":"d","state":"complete"}`,
			Event{DeviceReturnID: "d", State: "complete"}, ""},
		{"all fields", `{"device_return_id":"d","serial_number":"SN1","state":"failed","test":true,"ticket_url":"https://t/1","url":"https://u/1"}`,
			Event{DeviceReturnID: "d", State: "failed", SerialNumber: "SN1", HasSerialNumber: true, Test: true,
				TicketURL: "https://t/1", HasTicketURL: true, URL: "https://u/1", HasURL: true}, ""},
		{"nulls", `{"device_return_id":"d","state":"complete","serial_number":null,"ticket_url":null,"url":null,"test":false}`,
			Event{DeviceReturnID: "d", State: "complete"}, ""},
		{"whitespace and unknown fields", " \n{ \"extra\" : [1, {\"a\": -1.5e3}, null, true] ,\t\"device_return_id\":\"d\" , \"state\" : \"complete\", \"n\": 0 }\r\n",
			Event{DeviceReturnID: "d", State: "complete"}, ""},
		{"escapes decoded", `{"device_return_id":"a\/b\u00e9\"q","state":"compl\u0065te"}`,
			Event{DeviceReturnID: `a/bé"q`, State: "complete"}, ""},
		{"surrogate pair", `{"device_return_id":"\ud83d\ude00","state":"x"}`,
			Event{DeviceReturnID: "😀", State: "x"}, ""},
		{"lone surrogate in an unknown field is fine", `{"device_return_id":"d","state":"x","note":"\ud800"}`,
			Event{DeviceReturnID: "d", State: "x"}, ""},
		{"escaped U+FFFD kept", `{"device_return_id":"\ufffd","state":"x"}`,
			Event{DeviceReturnID: "\ufffd", State: "x"}, ""},
		{"escaped key", `{"devic\u0065_return_id":"d","st\u0061te":"complete"}`,
			Event{DeviceReturnID: "d", State: "complete"}, ""},
		{"unknown state kept", `{"device_return_id":"d","state":"lost_in_space"}`,
			Event{DeviceReturnID: "d", State: "lost_in_space"}, ""},
		{"non-ASCII kept", `{"device_return_id":"d","state":"complete","serial_number":"Ünïcødé"}`,
			Event{DeviceReturnID: "d", State: "complete", SerialNumber: "Ünïcødé", HasSerialNumber: true}, ""},

		{"empty", ``, Event{}, ReasonPayloadEmpty},
		{"whitespace only", " \n\t", Event{}, ReasonPayloadEmpty},
		{"not JSON", `device_return_id=d`, Event{}, ReasonPayloadInvalidJSON},
		{"truncated", `{"device_return_id":"d","state":"complete"`, Event{}, ReasonPayloadInvalidJSON},
		{"trailing garbage", `{"device_return_id":"d","state":"complete"}x`, Event{}, ReasonPayloadInvalidJSON},
		{"two objects", `{"device_return_id":"d","state":"complete"}{}`, Event{}, ReasonPayloadInvalidJSON},
		{"trailing comma", `{"device_return_id":"d","state":"complete",}`, Event{}, ReasonPayloadInvalidJSON},
		{"single quotes", `{'device_return_id':'d'}`, Event{}, ReasonPayloadInvalidJSON},
		{"bad number", `{"device_return_id":"d","state":"complete","n":01}`, Event{}, ReasonPayloadInvalidJSON},
		{"bad literal", `{"device_return_id":"d","state":"complete","n":tru}`, Event{}, ReasonPayloadInvalidJSON},
		{"raw newline in string", "{\"device_return_id\":\"a\nb\",\"state\":\"complete\"}", Event{}, ReasonPayloadInvalidJSON},
		{"bad escape", `{"device_return_id":"\x","state":"complete"}`, Event{}, ReasonPayloadInvalidJSON},
		{"short unicode escape", `{"device_return_id":"\u12","state":"complete"}`, Event{}, ReasonPayloadInvalidJSON},
		{"too deep", `{"device_return_id":"d","state":"complete","x":` + strings.Repeat("[", 300) + strings.Repeat("]", 300) + `}`, Event{}, ReasonPayloadInvalidJSON},
		// The outermost value is level 1, for objects and arrays alike.
		{"256 levels: object and 255 arrays", `{"device_return_id":"d","state":"complete","x":` + strings.Repeat("[", 255) + strings.Repeat("]", 255) + `}`,
			Event{DeviceReturnID: "d", State: "complete"}, ""},
		{"too deep: object and 256 arrays", `{"device_return_id":"d","state":"complete","x":` + strings.Repeat("[", 256) + strings.Repeat("]", 256) + `}`, Event{}, ReasonPayloadInvalidJSON},
		{"too deep: object, objects and arrays", `{"device_return_id":"d","state":"complete","x":` + strings.Repeat(`{"a":[`, 128) + strings.Repeat("]}", 128) + `}`, Event{}, ReasonPayloadInvalidJSON},
		{"256 levels of arrays", strings.Repeat("[", 256) + strings.Repeat("]", 256), Event{}, ReasonPayloadWrongType},
		{"too deep: 257 levels of arrays", strings.Repeat("[", 257) + strings.Repeat("]", 257), Event{}, ReasonPayloadInvalidJSON},
		{"array", `[{"device_return_id":"d","state":"complete"}]`, Event{}, ReasonPayloadWrongType},
		{"string", `"complete"`, Event{}, ReasonPayloadWrongType},
		{"bad non-object", `01`, Event{}, ReasonPayloadInvalidJSON},
		{"non-object then garbage", `[] x`, Event{}, ReasonPayloadInvalidJSON},
		{"missing state", `{"device_return_id":"d"}`, Event{}, ReasonPayloadMissing},
		{"missing id", `{"state":"complete"}`, Event{}, ReasonPayloadMissing},
		{"empty object", `{}`, Event{}, ReasonPayloadMissing},
		{"empty state", `{"device_return_id":"d","state":""}`, Event{}, ReasonPayloadMissing},
		{"null state", `{"device_return_id":"d","state":null}`, Event{}, ReasonPayloadWrongType},
		{"numeric id", `{"device_return_id":42,"state":"complete"}`, Event{}, ReasonPayloadWrongType},
		{"object state", `{"device_return_id":"d","state":{"v":"complete"}}`, Event{}, ReasonPayloadWrongType},
		{"test as string", `{"device_return_id":"d","state":"complete","test":"true"}`, Event{}, ReasonPayloadWrongType},
		{"test null", `{"device_return_id":"d","state":"complete","test":null}`, Event{}, ReasonPayloadWrongType},
		{"test number", `{"device_return_id":"d","state":"complete","test":1}`, Event{}, ReasonPayloadWrongType},
		{"serial number", `{"device_return_id":"d","state":"complete","serial_number":123}`, Event{}, ReasonPayloadWrongType},
		{"url bool", `{"device_return_id":"d","state":"complete","url":false}`, Event{}, ReasonPayloadWrongType},
		{"ticket_url array", `{"device_return_id":"d","state":"complete","ticket_url":[]}`, Event{}, ReasonPayloadWrongType},
		{"duplicate state", `{"device_return_id":"d","state":"failed","state":"complete"}`, Event{}, ReasonPayloadDuplicate},
		{"duplicate via escape", `{"device_return_id":"d","state":"failed","st\u0061te":"complete"}`, Event{}, ReasonPayloadDuplicate},
		{"escaped CR LF in id", `{"device_return_id":"a\r\nX-Evil: 1","state":"complete"}`, Event{}, ReasonPayloadBadString},
		{"escaped NUL in state", `{"device_return_id":"d","state":"complete\u0000"}`, Event{}, ReasonPayloadBadString},
		{"tab in url", `{"device_return_id":"d","state":"complete","url":"a\tb"}`, Event{}, ReasonPayloadBadString},
		{"DEL in serial", "{\"device_return_id\":\"d\",\"state\":\"complete\",\"serial_number\":\"a\x7fb\"}", Event{}, ReasonPayloadBadString},
		{"C1 control in ticket_url", "{\"device_return_id\":\"d\",\"state\":\"complete\",\"ticket_url\":\"a\u0085b\"}", Event{}, ReasonPayloadBadString},
		{"escaped C1 control", `{"device_return_id":"d\u009b","state":"complete"}`, Event{}, ReasonPayloadBadString},
		{"invalid UTF-8 in id", "{\"device_return_id\":\"\xff\",\"state\":\"complete\"}", Event{}, ReasonPayloadBadString},
		{"lone high surrogate", `{"device_return_id":"\ud800","state":"complete"}`, Event{}, ReasonPayloadBadString},
		{"high surrogate, then a letter", `{"device_return_id":"\ud83d!","state":"complete"}`, Event{}, ReasonPayloadBadString},
		{"high surrogate, then another escape", `{"device_return_id":"d","state":"complete","url":"\ud83d\u0041"}`, Event{}, ReasonPayloadBadString},
		{"two high surrogates", `{"device_return_id":"d","state":"complete","serial_number":"\ud83d\ud83d"}`, Event{}, ReasonPayloadBadString},
		{"lone low surrogate", `{"device_return_id":"d","state":"complete","ticket_url":"\ude00"}`, Event{}, ReasonPayloadBadString},
		{"pair reversed", `{"device_return_id":"\ude00\ud83d","state":"complete"}`, Event{}, ReasonPayloadBadString},
		{"pair split by a letter", `{"device_return_id":"d","state":"\ud83dx\ude00"}`, Event{}, ReasonPayloadBadString},
		{"control char in unknown field is fine", `{"device_return_id":"d","state":"complete","note":"a\nb"}`,
			Event{DeviceReturnID: "d", State: "complete"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ev, err := ParsePayload([]byte(tc.body))
			if got := ReasonOf(err); got != tc.reason {
				t.Fatalf("reason = %q (%v), want %q", got, err, tc.reason)
			}
			if tc.reason == "" && ev != tc.want {
				t.Fatalf("got %+v\nwant %+v", ev, tc.want)
			}
			// Our notion of valid JSON agrees with encoding/json's.
			if valid := json.Valid([]byte(tc.body)); valid == (tc.reason == ReasonPayloadInvalidJSON || tc.reason == ReasonPayloadEmpty) {
				if !strings.HasPrefix(tc.name, "too deep") { // we bound nesting at maxDepth; encoding/json at 10000
					t.Fatalf("json.Valid = %v but reason = %q", valid, tc.reason)
				}
			}
		})
	}
}

func TestParsePayloadKnownStatesInterned(t *testing.T) {
	for _, s := range States {
		ev, err := ParsePayload([]byte(`{"device_return_id":"d","state":"` + s + `"}`))
		if err != nil || ev.State != s || !KnownState(ev.State) {
			t.Fatalf("%s: %+v %v", s, ev, err)
		}
	}
	if KnownState("completed") || KnownState("") {
		t.Fatal("KnownState accepts an undocumented state")
	}
	if len(States) != 7 {
		t.Fatalf("%d states, want the vendor's 7", len(States))
	}
}

// The body is not retained: strings survive the buffer being overwritten.
func TestParsePayloadDoesNotAliasBody(t *testing.T) {
	body := []byte(`{"device_return_id":"abc","state":"complete","url":"https://x"}`)
	ev, err := ParsePayload(body)
	if err != nil {
		t.Fatal(err)
	}
	for i := range body {
		body[i] = 'Z'
	}
	if ev.DeviceReturnID != "abc" || ev.URL != "https://x" {
		t.Fatalf("event changed with the body: %+v", ev)
	}
}

// The SWAR word tests agree with byte-by-byte checks, for every byte value
// at every position among several fillers, and for random words.
func TestSWARWordTests(t *testing.T) {
	randomWord := func(rng *rand.Rand) (w [8]byte) {
		binary.LittleEndian.PutUint64(w[:], rng.Uint64())
		return w
	}
	mostlyPrintable := func(rng *rand.Rand) (w [8]byte) {
		for j := range w {
			w[j] = byte(0x1c + rng.IntN(0x68)) // printable, with the edges
		}
		return w
	}
	tests := []struct {
		name  string
		word  func(uint64) bool
		any   bool // word is true if any byte matches (else: if all do)
		byte  func(byte) bool
		fills []byte
		gen   func(*rand.Rand) [8]byte
	}{
		{"hasSpecial", hasSpecial, true, func(c byte) bool { return c == '"' || c == '\\' || c < 0x20 },
			[]byte{'a', 0xff, 0x80, 0x21}, randomWord},
		{"plainASCII", plainASCII, false, func(c byte) bool { return c >= 0x20 && c < 0x7f },
			[]byte{'a', 0x20, 0x7e, '0'}, mostlyPrintable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			check := func(w [8]byte) {
				want := !tc.any
				for _, c := range w {
					if tc.any {
						want = want || tc.byte(c)
					} else {
						want = want && tc.byte(c)
					}
				}
				if got := tc.word(binary.LittleEndian.Uint64(w[:])); got != want {
					t.Fatalf("%s(%q) = %v, want %v", tc.name, w, got, want)
				}
			}
			for pos := 0; pos < 8; pos++ {
				for c := 0; c < 256; c++ {
					for _, fill := range tc.fills {
						var w [8]byte
						for i := range w {
							w[i] = fill
						}
						w[pos] = byte(c)
						check(w)
					}
				}
			}
			rng := rand.New(rand.NewPCG(1, 2))
			for i := 0; i < 200000; i++ {
				check(tc.gen(rng))
			}
		})
	}
}

// A body that is not JSON at all is named for what it is not, a JSON
// object, rather than for the literal its first letter might begin.
func TestParsePayloadNotAnObjectMessage(t *testing.T) {
	for _, tc := range []struct{ body, reason, msg string }{
		{"not json", string(ReasonPayloadInvalidJSON), "body is not a JSON object: it starts with 'n'"},
		{"<xml/>", string(ReasonPayloadInvalidJSON), "body is not a JSON object: it starts with '<'"},
		{"[1,", string(ReasonPayloadInvalidJSON), "body is not a JSON object, nor valid JSON: unexpected end of JSON; want a value"},
		{"[] x", string(ReasonPayloadInvalidJSON), "body is not a JSON object, nor valid JSON: unexpected 'x' at offset 3; want end of input"},
		{`"complete"`, string(ReasonPayloadWrongType), "payload is not a JSON object"},
	} {
		_, err := ParsePayload([]byte(tc.body))
		f, ok := err.(*Failure)
		if !ok || string(f.Reason) != tc.reason || f.Msg != tc.msg {
			t.Errorf("ParsePayload(%q) = %v; want %s: %s", tc.body, err, tc.reason, tc.msg)
		}
	}
}
