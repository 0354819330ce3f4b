package rereadyverify

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

func TestUnmarshalCaddyfile(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  Handler
	}{
		{"one secret", `reready_verify {
			secret ssk_a
		}`, Handler{Secrets: []string{"ssk_a"}}},
		{"all options", `reready_verify {
			secret ssk_a ssk_b
			secret {env.RR_SECRET}
			token {file./run/secrets/token}
			tolerance 90s
			max_body 1MiB
			body_timeout 2s
			replay storage
			mode observe
		}`, Handler{
			Replay:      "storage",
			Mode:        "observe",
			Secrets:     []string{"ssk_a", "ssk_b", "{env.RR_SECRET}"},
			Token:       "{file./run/secrets/token}",
			Tolerance:   caddy.Duration(90 * time.Second),
			MaxBody:     1 << 20,
			BodyTimeout: caddy.Duration(2 * time.Second),
		}},
		{"token only", `reready_verify {
			token abc
		}`, Handler{Token: "abc"}},
		{"decimal size and day duration", `reready_verify {
			secret ssk_a
			max_body 1KB
			tolerance 1d
		}`, Handler{Secrets: []string{"ssk_a"}, MaxBody: 1000, Tolerance: caddy.Duration(24 * time.Hour)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var h Handler
			if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input)); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(h, tc.want) {
				t.Fatalf("got %+v\nwant %+v", h, tc.want)
			}
		})
	}
}

func TestUnmarshalCaddyfileErrors(t *testing.T) {
	tests := []struct {
		name, input, want string
	}{
		{"no block", `reready_verify`, "at least one secret or a token"},
		{"empty block", "reready_verify {\n}", "at least one secret or a token"},
		{"argument", "reready_verify ssk_a {\nsecret x\n}", `"ssk_a"`},
		{"unknown subdirective", "reready_verify {\nsecret x\nsecrets y\n}", `unknown subdirective "secrets"`},
		{"secret without value", "reready_verify {\nsecret\n}", "wrong argument count"},
		{"token without value", "reready_verify {\ntoken\n}", "wrong argument count"},
		{"empty token", "reready_verify {\nsecret x\ntoken \"\"\n}", "token is an empty string"},
		{"empty secret", "reready_verify {\nsecret x \"\"\n}", "secret is an empty string"},
		{"token two values", "reready_verify {\ntoken a b\n}", `extra "b"`},
		{"duplicate token", "reready_verify {\ntoken a\ntoken b\n}", "duplicate token"},
		{"duplicate tolerance", "reready_verify {\nsecret x\ntolerance 1m\ntolerance 2m\n}", `duplicate tolerance option "2m"`},
		{"duplicate max_body", "reready_verify {\nsecret x\nmax_body 1KiB\nmax_body 2KiB\n}", "duplicate max_body"},
		{"duplicate body_timeout", "reready_verify {\nsecret x\nbody_timeout 1s\nbody_timeout 1s\n}", "duplicate body_timeout"},
		{"bad tolerance", "reready_verify {\nsecret x\ntolerance soon\n}", `invalid tolerance "soon"`},
		{"zero tolerance", "reready_verify {\nsecret x\ntolerance 0s\n}", `invalid tolerance "0s": must be positive`},
		{"negative tolerance", "reready_verify {\nsecret x\ntolerance -5m\n}", `invalid tolerance "-5m": must be positive`},
		{"sub-second tolerance", "reready_verify {\nsecret x\ntolerance 500ms\n}", `invalid tolerance "500ms": must be at least 1s`},
		{"tolerance without value", "reready_verify {\nsecret x\ntolerance\n}", "wrong argument count"},
		{"bad body_timeout", "reready_verify {\nsecret x\nbody_timeout 10\n}", `invalid body_timeout "10"`},
		{"zero body_timeout", "reready_verify {\nsecret x\nbody_timeout 0\n}", `invalid body_timeout "0"`},
		{"bad max_body", "reready_verify {\nsecret x\nmax_body lots\n}", `invalid max_body "lots": want a size such as 65536 (bytes), 64KiB or 1MB; KiB and MiB are powers of 1024, kB and MB of 1000`},
		{"unknown size unit", "reready_verify {\nsecret x\nmax_body 64XB\n}", `invalid max_body "64XB": want a size such as 65536 (bytes), 64KiB or 1MB`},
		{"zero max_body", "reready_verify {\nsecret x\nmax_body 0\n}", `invalid max_body "0"`},
		{"negative max_body", "reready_verify {\nsecret x\nmax_body -1KiB\n}", `invalid max_body "-1KiB"`},
		{"bad replay", "reready_verify {\nsecret x\nreplay redis\n}", `invalid replay "redis": want memory, storage or off`},
		{"duplicate replay", "reready_verify {\nsecret x\nreplay off\nreplay memory\n}", "duplicate replay"},
		{"replay without value", "reready_verify {\nsecret x\nreplay\n}", "wrong argument count"},
		{"bad mode", "reready_verify {\nsecret x\nmode audit\n}", `invalid mode "audit": want enforce or observe`},
		{"duplicate mode", "reready_verify {\nsecret x\nmode observe\nmode observe\n}", "duplicate mode"},
		{"max_body two values", "reready_verify {\nsecret x\nmax_body 1 KiB\n}", `extra "KiB"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

// Sizes read as humanize.ParseBytes reads them, which the README documents:
// KiB, MiB (and Ki, Mi) are powers of 1024; kB, KB, kb, MB (and k, M)
// powers of 1000; units are case-insensitive.
func TestUnmarshalCaddyfileSizes(t *testing.T) {
	for _, tc := range []struct {
		size string
		want int64
	}{
		{"65536", 65536},
		{"64KiB", 64 << 10},
		{"64kib", 64 << 10},
		{"64Ki", 64 << 10},
		{"64KB", 64000},
		{"64kB", 64000},
		{"64kb", 64000},
		{"64k", 64000},
		{"1MB", 1000000},
		{"1MiB", 1 << 20},
		{"1.5KiB", 1536},
		{"1GiB", 1 << 30},
		{"1GB", 1000000000},
		{"1TiB", 1 << 40},
	} {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("reready_verify {\nsecret x\nmax_body " + tc.size + "\n}"))
		if err != nil || h.MaxBody != tc.want {
			t.Errorf("max_body %s = %d (%v), want %d", tc.size, h.MaxBody, err, tc.want)
		}
	}
}

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
