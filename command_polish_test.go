package rereadyverify

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/reready-verify/caddy-reready-verify/internal/verify"
	"github.com/spf13/cobra"
)

// `sign` refuses a body with nothing to sign (the gateway rejects it as
// payload_empty), from stdin or a file, and prints no signature.
func TestCommandSignRefusesEmptyBody(t *testing.T) {
	t.Setenv(envSecret, "")
	empty := filepath.Join(t.TempDir(), "empty.json")
	if err := os.WriteFile(empty, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, stdin, file, want string
	}{
		{"stdin, nothing", "", "", "the body read from stdin is empty: there is nothing to sign, and the gateway rejects an empty payload (payload_empty)"},
		{"stdin, whitespace", " \r\n\t", "-", "the body read from stdin is empty"},
		{"file, whitespace", "{}", empty, "the body read from --file " + `"` + empty + `"` + " is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := runSign(signOptions{Secret: cmdSecret, Timestamp: "1", File: tc.file}, strings.NewReader(tc.stdin), &out, &errOut)
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if out.Len() != 0 {
				t.Errorf("printed %q", out.String())
			}
		})
	}
}

// Ages and tolerances read as durations, with days from one day on, in a
// form caddy.ParseDuration reads back.
func TestHumanSeconds(t *testing.T) {
	for _, tc := range []struct {
		sec  int64
		want string
	}{
		{0, "0s"},
		{59, "59s"},
		{299, "4m59s"},
		{3600, "1h0m0s"},
		{51125, "14h12m5s"},
		{86400, "1d"},
		{86401, "1d1s"},
		{51139100, "591d21h18m20s"},
		{8200000000, "94907d9h46m40s"}, // about the farthest t (10 digits) is from now
	} {
		got := verify.HumanSeconds(tc.sec)
		if got != tc.want {
			t.Errorf("verify.HumanSeconds(%d) = %q, want %q", tc.sec, got, tc.want)
		}
		if d, err := caddy.ParseDuration(got); err != nil || d != time.Duration(tc.sec)*time.Second {
			t.Errorf("caddy.ParseDuration(%q) = %v, %v; want %ds", got, d, err, tc.sec)
		}
	}
}

// An old but valid signature and a stale one name their age as a duration.
func TestCommandVerifyAgeIsHuman(t *testing.T) {
	t.Setenv(envSecret, "")
	const now = 1795975040
	cmdSetClock(t, time.Unix(now, 0))
	body := []byte(cmdVendorBody)
	ts := "1744835940" // 591d21h18m20s before now
	header := "t=" + ts + ",v=" + cmdExternalMAC(t, cmdPython, cmdSecret, ts, body)

	var out bytes.Buffer
	if err := runVerify(verifyOptions{Secret: cmdSecret, Tolerance: "1000d", Header: header}, bytes.NewReader(body), &out, &out); err != nil {
		t.Fatal(err)
	}
	if want := "valid: v 1 of 1 matched; t=" + ts + " is 591d21h18m20s old (tolerance 24000h0m0s)\n"; out.String() != want {
		t.Errorf("printed %q, want %q", out.String(), want)
	}

	out.Reset()
	err := runVerify(verifyOptions{Secret: cmdSecret, Header: header}, bytes.NewReader(body), &out, &out)
	if want := "invalid: stale timestamp (timestamp_stale): t " + ts + " is 591d21h18m20s old; tolerance is 5m0s\n"; out.String() != want {
		t.Errorf("printed %q, want %q", out.String(), want)
	}
	// Printed already: the error tells cobraRun not to print it again, and
	// still carries the reason.
	var shown shownError
	var f *Failure
	if !errors.As(err, &shown) || !errors.As(err, &f) || f.Reason != ReasonTimestampStale {
		t.Errorf("error %#v, want a shownError wrapping the %s failure", err, ReasonTimestampStale)
	}
}

// `caddy reready --help` describes every subcommand in its own text, not
// only in cobra's list of names.
func TestCommandHelpDescribesEverySubcommand(t *testing.T) {
	c := caddycmd.Commands()["reready"]
	root := &cobra.Command{Use: c.Name, Long: c.Long}
	c.CobraFunc(root)
	if len(root.Commands()) < 5 {
		t.Fatalf("%d subcommands, want sign, send, verify, deliveries and queue", len(root.Commands()))
	}
	for _, sub := range root.Commands() {
		if !regexp.MustCompile(`(?m)^  ` + sub.Name() + ` +\S`).MatchString(c.Long) {
			t.Errorf("caddy reready --help does not describe %s:\n%s", sub.Name(), c.Long)
		}
	}
}
