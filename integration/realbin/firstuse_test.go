package realbin

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// First use of `caddy reready` from the built binary: a failed verify is
// printed once, as plain text, and exits 1; ages read as durations; sign
// refuses an empty body; the help describes the subcommands and points at
// this module's documentation.
func TestCLIFirstUse(t *testing.T) {
	const secret = "ssk_first_use_3c5e7a9b"
	env := []string{"REREADY_SIGNING_SECRET=" + secret}
	body := newEvent("complete").body()
	file := filepath.Join(t.TempDir(), "body.json")
	if err := os.WriteFile(file, body, 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-(14*time.Hour + 12*time.Minute + 5*time.Second)).Unix()
	sig := rubySigner.sign(t, secret, old, body)

	t.Run("verify failure printed once, plainly", func(t *testing.T) {
		res := caddyCmd(t, env, "reready", "verify", "--header", sig, "--file", file)
		if res.code != 1 {
			t.Errorf("exit %d, want 1", res.code)
		}
		// The verdict, and nothing else: no JSON log line repeating it.
		lines := strings.Split(strings.TrimRight(res.output, "\n"), "\n")
		if len(lines) != 1 || !strings.HasPrefix(lines[0], "invalid: stale timestamp (timestamp_stale): t "+fmt.Sprint(old)+" is 14h12m") ||
			!strings.HasSuffix(lines[0], " old; tolerance is 5m0s") {
			t.Errorf("output:\n%s\nwant one line: invalid: stale timestamp (timestamp_stale): t %d is 14h12m…s old; tolerance is 5m0s", res.output, old)
		}
	})

	t.Run("valid signature's age as a duration", func(t *testing.T) {
		res := caddyCmd(t, env, "reready", "verify", "--header", sig, "--file", file, "--tolerance", "1d")
		if res.code != 0 || !strings.HasPrefix(res.output, "valid: v 1 of 1 matched; t="+fmt.Sprint(old)+" is 14h12m") ||
			!strings.HasSuffix(res.output, "s old (tolerance 24h0m0s)\n") {
			t.Errorf("exit %d, output:\n%s", res.code, res.output)
		}
	})

	t.Run("other failures still exit 1 with one message", func(t *testing.T) {
		res := caddyCmd(t, nil, "reready", "verify", "--header", sig, "--file", file)
		if res.code != 1 || strings.Count(res.output, "no signing secret") != 1 {
			t.Errorf("exit %d, output:\n%s", res.code, res.output)
		}
	})

	t.Run("sign refuses an empty body", func(t *testing.T) {
		res := caddyCmd(t, env, "reready", "sign") // stdin is empty
		if res.code != 1 || !strings.Contains(res.output, "the body read from stdin is empty") || strings.Contains(res.output, "t=") {
			t.Errorf("exit %d, output:\n%s", res.code, res.output)
		}
	})

	t.Run("help describes the subcommands", func(t *testing.T) {
		for _, args := range [][]string{{"reready", "--help"}, {"help", "reready"}} {
			res := caddyCmd(t, nil, args...)
			if res.code != 0 {
				t.Errorf("caddy %s: exit %d", strings.Join(args, " "), res.code)
			}
			for _, want := range []string{
				"sign    prints the X-ReReady-Signature-512 value for a body",
				"send    POSTs a signed ReReady-shaped delivery to an endpoint",
				"verify  checks a captured X-ReReady-Signature-512 value against a body",
				`Use "caddy reready [command] --help" for more information about a command.`,
				"README.md of the module github.com/reready-verify/caddy-reready-verify",
			} {
				if !strings.Contains(res.output, want) {
					t.Errorf("caddy %s lacks %q:\n%s", strings.Join(args, " "), want, res.output)
				}
			}
			if strings.Contains(res.output, "caddyserver.com/docs/command-line") {
				t.Errorf("caddy %s points at Caddy's command-line docs, which do not describe reready:\n%s", strings.Join(args, " "), res.output)
			}
		}
		res := caddyCmd(t, nil, "reready", "verify", "--help")
		if !strings.Contains(res.output, "README.md of the module") {
			t.Errorf("caddy reready verify --help:\n%s", res.output)
		}
	})
}
