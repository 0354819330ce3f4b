//go:build fullsuite

package realbin

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest/harness"
)

// cmdResult is what a bin/caddy subcommand did.
type cmdResult struct {
	output string // stdout and stderr
	err    error
	code   int
}

// caddyCmd runs bin/caddy with args (in a temp dir, REREADY_* unset, env
// added) and a bounded wait.
func caddyCmd(t *testing.T, env []string, args ...string) cmdResult {
	t.Helper()
	return caddyCmdBin(t, caddyBin, env, args...)
}

// caddyCmdBin is caddyCmd with the Caddy binary bin (bin/caddy-test, say,
// to adapt a Caddyfile that uses a test storage).
func caddyCmdBin(t *testing.T, bin string, env []string, args ...string) cmdResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	cmd.Env = append(harness.CaddyEnv(dir), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("caddy %s did not finish within 30s:\n%s", strings.Join(args, " "), out.String())
	}
	res := cmdResult{output: out.String(), err: err}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		res.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("caddy %s: %v", strings.Join(args, " "), err)
	}
	return res
}

// writeCaddyfile writes a one-site Caddyfile with the given reready_verify
// block and returns its path.
func writeCaddyfile(t *testing.T, block string) string {
	t.Helper()
	port, err := harness.ReservePort()
	if err != nil {
		t.Fatal(err)
	}
	admin, err := harness.ReservePort()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "Caddyfile")
	src := fmt.Sprintf("{\n\tadmin 127.0.0.1:%d\n\tpersist_config off\n\tdefault_bind 127.0.0.1\n}\n\nhttp://127.0.0.1:%d {\n\treready_verify /webhooks/reready {\n\t\t%s\n\t}\n\treverse_proxy /webhooks/reready %s\n}\n",
		admin, port, block, node.addr)
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// `caddy validate` fails closed, naming the placeholder, when a secret or
// token expands to nothing: an unset or empty variable, a missing or empty
// file. A config that resolves passes, so the failures are not incidental.
func TestValidateRejectsEmptySecret(t *testing.T) {
	dir := t.TempDir()
	emptyFile := filepath.Join(dir, "empty-secret")
	goodFile := filepath.Join(dir, "secret")
	if err := os.WriteFile(emptyFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(goodFile, []byte("ssk_validate_from_file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missingFile := filepath.Join(dir, "no-such-dir", "secret")

	for _, c := range []struct {
		name  string
		block string
		env   []string
		fail  string // placeholder the error must name; "" means validate passes
	}{
		{"secret from set env", "secret {env.REREADY_TEST_SECRET}", []string{"REREADY_TEST_SECRET=ssk_validate_ok"}, ""},
		{"secret from readable file", "secret {file." + goodFile + "}", nil, ""},
		{"secret from unset env", "secret {env.REREADY_UNSET_VAR}", nil, "{env.REREADY_UNSET_VAR}"},
		{"secret from empty env", "secret {env.REREADY_EMPTY_VAR}", []string{"REREADY_EMPTY_VAR="}, "{env.REREADY_EMPTY_VAR}"},
		{"second secret unset", "secret ssk_present_one {env.REREADY_UNSET_VAR}", nil, "{env.REREADY_UNSET_VAR}"},
		{"secret from missing file", "secret {file." + missingFile + "}", nil, "{file." + missingFile + "}"},
		{"secret from empty file", "secret {file." + emptyFile + "}", nil, "{file." + emptyFile + "}"},
		{"token from unset env", "token {env.REREADY_UNSET_TOKEN}", nil, "{env.REREADY_UNSET_TOKEN}"},
	} {
		t.Run(c.name, func(t *testing.T) {
			config := writeCaddyfile(t, c.block)
			res := caddyCmd(t, c.env, "validate", "--config", config, "--adapter", "caddyfile")
			if c.fail == "" {
				if res.err != nil {
					t.Fatalf("caddy validate failed on a good config: %v\n%s", res.err, res.output)
				}
				return
			}
			if res.err == nil {
				t.Fatalf("caddy validate passed; want a non-zero exit naming %s\n%s", c.fail, res.output)
			}
			if !strings.Contains(res.output, c.fail) || !strings.Contains(res.output, "empty") {
				t.Errorf("caddy validate exited %d, but its message does not name %s as empty:\n%s", res.code, c.fail, res.output)
			}
		})
	}

	// caddy run refuses the same config rather than serving unverified.
	t.Run("caddy run refuses to start", func(t *testing.T) {
		config := writeCaddyfile(t, "secret {env.REREADY_UNSET_VAR}")
		res := caddyCmd(t, nil, "run", "--config", config, "--adapter", "caddyfile")
		if res.err == nil || !strings.Contains(res.output, "{env.REREADY_UNSET_VAR}") {
			t.Errorf("caddy run exited with %v; want a failure naming {env.REREADY_UNSET_VAR}:\n%s", res.err, res.output)
		}
	})
}

// The three independent signers agree with each other and with Go's
// crypto/hmac on the same inputs, including bytes a shell or an encoding
// layer could mangle. Without this, a signer bug could hide a gateway bug.
func TestSignersAgree(t *testing.T) {
	vendor := []byte(`{ "device_return_id": "e025d043-c41d-4167-8bd3-24cc66345696", "serial_number": null, "state": "pending_return_shipment", "test": false, "ticket_url": null, "url": "https://www.reready.co/device_returns/e025d043-c41d-4167-8bd3-24cc66345696" }`)
	for _, c := range []struct {
		name   string
		secret string
		body   []byte
	}{
		{"vendor example", "ssk_0123456789abcdef", vendor},
		{"trailing newline", "ssk_0123456789abcdef", append(append([]byte{}, vendor...), '\n')},
		{"empty body", "ssk_0123456789abcdef", nil},
		{"non-ASCII and invalid UTF-8", "ssk_0123456789abcdef", []byte("{\"note\": \"Zoë’s \xff\xfe\x00 \\u00e9\"}\r\n")},
		{"secret with shell characters", `ssk_a$b"c'd e\f`, vendor},
	} {
		t.Run(c.name, func(t *testing.T) {
			const ts = 1744831201
			m := hmac.New(sha512.New, []byte(c.secret))
			fmt.Fprintf(m, "%d.", ts)
			m.Write(c.body)
			want := fmt.Sprintf("t=%d,v=%s", ts, hex.EncodeToString(m.Sum(nil)))
			for _, s := range harness.Signers {
				if got := s.Sign(t, c.secret, ts, c.body); got != want {
					t.Errorf("%s signer: %s\nwant %s", s.Name, got, want)
				}
			}
		})
	}
}
