// Package integration holds golden `caddy adapt` files and in-process
// end-to-end tests (caddytest, on an admin port and HTTP ports picked free at
// start, see main_test.go; not parallel).
package integration

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/caddytest"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/reready-verify/caddy-reready-verify"
)

var update = flag.Bool("update", false, "rewrite the JSON half of the golden adapt files")

// TestCaddyfileAdapt checks each caddyfile_adapt/*.caddyfiletest: a
// Caddyfile, a line of dashes, and the JSON `caddy adapt` must produce.
func TestCaddyfileAdapt(t *testing.T) {
	files, err := filepath.Glob("caddyfile_adapt/*.caddyfiletest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			parts := strings.Split(string(data), "----------")
			if len(parts) != 2 {
				t.Fatalf("%s: want one ---------- separator", file)
			}
			cfg := strings.TrimSpace(parts[0]) + "\n"
			if *update {
				out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), nil)
				if err != nil {
					t.Fatal(err)
				}
				var pretty bytes.Buffer
				if err := json.Indent(&pretty, out, "", "\t"); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(file, []byte(cfg+"----------\n"+pretty.String()+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if !caddytest.CompareAdapt(t, file, cfg, "caddyfile", strings.TrimSpace(parts[1])) {
				t.Fatalf("%s: adapted JSON differs (diff above)", file)
			}
		})
	}
}

// TestCaddyfileAdaptErrors checks that bad Caddyfiles fail to adapt with
// a message naming the bad value.
func TestCaddyfileAdaptErrors(t *testing.T) {
	tests := []struct {
		name, block, want string
	}{
		{"unknown subdirective", "secret ssk_a\nhmac sha256", `unknown subdirective "hmac"`},
		{"bad tolerance", "secret ssk_a\ntolerance 5 minutes", `extra "minutes"`},
		{"unparsable tolerance", "secret ssk_a\ntolerance fivem", `invalid tolerance "fivem"`},
		{"zero tolerance", "secret ssk_a\ntolerance 0s", `invalid tolerance "0s": must be positive`},
		{"negative body_timeout", "secret ssk_a\nbody_timeout -1s", `invalid body_timeout "-1s": must be positive`},
		{"bad max_body", "secret ssk_a\nmax_body big", `invalid max_body "big"`},
		{"zero max_body", "secret ssk_a\nmax_body 0KiB", `invalid max_body "0KiB"`},
		{"duplicate token", "token a\ntoken b", "duplicate token"},
		{"missing secret value", "secret", "wrong argument count"},
		{"nothing to check", "tolerance 1m", "at least one secret or a token"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := "http://localhost:9080 {\n\treready_verify /hook {\n" + tc.block + "\n\t}\n\trespond 204\n}\n"
			_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}
