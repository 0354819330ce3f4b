package rereadyverify

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

func TestUnmarshalCaddyfileQueue(t *testing.T) {
	tests := []struct {
		name, input string
		want        QueueConfig
	}{
		{"bare", "reready_verify {\nsecret x\nqueue\n}", QueueConfig{}},
		{"empty block", "reready_verify {\nsecret x\nqueue {\n}\n}", QueueConfig{}},
		{"both", "reready_verify {\nsecret x\nqueue {\nmax_age 2h\nmax_items 50\n}\nmode observe\n}",
			QueueConfig{MaxAge: caddy.Duration(2 * time.Hour), MaxItems: 50}},
		{"days", "reready_verify {\nqueue {\nmax_age 7d\n}\nsecret x\n}", QueueConfig{MaxAge: caddy.Duration(7 * 24 * time.Hour)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var h Handler
			if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input)); err != nil {
				t.Fatal(err)
			}
			if h.Queue == nil || *h.Queue != tc.want || len(h.Secrets) != 1 {
				t.Fatalf("queue %+v, secrets %v; want %+v", h.Queue, h.Secrets, tc.want)
			}
		})
	}
	errs := []struct{ name, input, want string }{
		{"value", "reready_verify {\nsecret x\nqueue on\n}", `queue takes no value, only an optional block; got "on"`},
		{"duplicate", "reready_verify {\nsecret x\nqueue\nqueue\n}", "duplicate queue"},
		{"bad max_age", "reready_verify {\nsecret x\nqueue {\nmax_age soon\n}\n}", `invalid queue max_age "soon"`},
		{"zero max_age", "reready_verify {\nsecret x\nqueue {\nmax_age 0s\n}\n}", `invalid queue max_age "0s": must be positive`},
		{"bad max_items", "reready_verify {\nsecret x\nqueue {\nmax_items many\n}\n}", `invalid queue max_items "many"`},
		{"zero max_items", "reready_verify {\nsecret x\nqueue {\nmax_items 0\n}\n}", `invalid queue max_items "0"`},
		{"unknown", "reready_verify {\nsecret x\nqueue {\nretries 3\n}\n}", `unknown queue option "retries"`},
		{"repeated", "reready_verify {\nsecret x\nqueue {\nmax_items 1\nmax_items 2\n}\n}", "duplicate queue option max_items"},
		{"no value", "reready_verify {\nsecret x\nqueue {\nmax_age\n}\n}", "wrong argument count"},
	}
	for _, tc := range errs {
		t.Run(tc.name, func(t *testing.T) {
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestGlobalOption(t *testing.T) {
	v, err := parseGlobalOption(caddyfile.NewTestDispenser("reready {\njournal_size 500\n}"), nil)
	if err != nil {
		t.Fatal(err)
	}
	app, ok := v.(httpcaddyfile.App)
	if !ok || app.Name != "reready" {
		t.Fatalf("got %#v", v)
	}
	var cfg App
	if err := json.Unmarshal(app.Value, &cfg); err != nil || cfg.JournalSize != 500 {
		t.Fatalf("app JSON %s: %v", app.Value, err)
	}
	for input, want := range map[string]string{
		"reready x":                                    `reready takes no value, only a block; got "x"`,
		"reready {\njournal_size 0\n}":                 `invalid journal_size "0"`,
		"reready {\njournal_size lots\n}":              `invalid journal_size "lots"`,
		"reready {\njournal_size 99999999999\n}":       `invalid journal_size "99999999999"`,
		"reready {\nqueue_size 1\n}":                   `unknown reready option "queue_size"`,
		"reready {\njournal_size 1\njournal_size 2\n}": "duplicate reready option journal_size",
		"reready {\njournal_size\n}":                   "wrong argument count",
	} {
		if _, err := parseGlobalOption(caddyfile.NewTestDispenser(input), nil); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err = %v, want %q", input, err, want)
		}
	}
	if err := (&App{JournalSize: -1}).Validate(); err == nil || !strings.Contains(err.Error(), "journal_size -1") {
		t.Errorf("Validate of a negative journal_size: %v", err)
	}
}
