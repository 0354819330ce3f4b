package rereadyverify

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/verify"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

// This file is the `caddy reready` command: sign a body, send a test
// delivery, or verify a captured signature, with the same core code the
// handler uses (Sign, NewVerifier, VerifySignature). Each subcommand is a
// run* function over plain options and streams; the cobra wiring at the
// bottom only reads flags.

// envSecret is the environment variable --secret defaults to, so the secret
// need not appear on the command line or in shell history.
const envSecret = "REREADY_SIGNING_SECRET"

// deviceReturnURLPrefix starts the url field of a ReReady payload; the
// device return's id follows it.
const deviceReturnURLPrefix = "https://www.reready.co/device_returns/"

// sendTimeout bounds a whole `send` exchange, from dialing to the last
// byte of the answer.
const sendTimeout = 30 * time.Second

// maxShownAnswer caps how much of the answer's body `send` prints.
const maxShownAnswer = 64 << 10

// cmdNow is the clock of the commands; tests replace it.
var cmdNow = time.Now

// ---------------------------------------------------------------------
// caddy reready sign

// signOptions are the flags of `caddy reready sign`.
type signOptions struct {
	Secret    string // "" means $REREADY_SIGNING_SECRET
	Timestamp string // unix seconds; "" means now
	File      string // "" or "-" means stdin
}

// runSign prints the X-ReReady-Signature-512 value for the body.
func runSign(o signOptions, stdin io.Reader, stdout, stderr io.Writer) error {
	secret, err := needSecret(o.Secret, stderr)
	if err != nil {
		return err
	}
	t := cmdNow()
	if o.Timestamp != "" {
		ts, ok := verify.ParseTimestamp(o.Timestamp)
		if !ok {
			return fmt.Errorf("invalid --timestamp %q: want unix seconds, 1-%d digits", o.Timestamp, verify.MaxTimestampDigits)
		}
		t = time.Unix(ts, 0)
	}
	body, err := readInput(o.File, stdin)
	if err != nil {
		return err
	}
	if len(bytes.Trim(body, " \t\r\n")) == 0 {
		from := "stdin"
		if o.File != "" && o.File != "-" {
			from = fmt.Sprintf("--file %q", o.File)
		}
		return fmt.Errorf("the body read from %s is empty: there is nothing to sign, and the gateway rejects an empty payload (%s)", from, ReasonPayloadEmpty)
	}
	_, err = fmt.Fprintln(stdout, verify.Sign(secret, t, body))
	return err
}

// ---------------------------------------------------------------------
// caddy reready verify

// verifyOptions are the flags of `caddy reready verify`.
type verifyOptions struct {
	Secret    string // "" means $REREADY_SIGNING_SECRET
	Tolerance string // a duration; "" means DefaultTolerance
	Header    string // the captured X-ReReady-Signature-512 value
	File      string // "" or "-" means stdin
}

// failureKinds names, for the user, the check each signature reason stands for.
var failureKinds = map[Reason]string{
	ReasonSignatureMalformed: "malformed header",
	ReasonTimestampStale:     "stale timestamp",
	ReasonTimestampFuture:    "timestamp in the future",
	ReasonSignatureMismatch:  "signature mismatch",
}

// runVerify checks a captured header value against the body, exactly as the
// handler would at cmdNow, and prints the outcome. An invalid signature is
// returned as a shownError wrapping the *Failure.
func runVerify(o verifyOptions, stdin io.Reader, stdout, stderr io.Writer) error {
	secret, err := needSecret(o.Secret, stderr)
	if err != nil {
		return err
	}
	tolerance := DefaultTolerance
	if o.Tolerance != "" {
		tolerance, err = caddy.ParseDuration(o.Tolerance)
		if err != nil {
			return fmt.Errorf("invalid --tolerance %q: want a duration such as 5m or 90s", o.Tolerance)
		}
		// The verifier counts whole seconds, so less than 1s would mean 0.
		if tolerance < time.Second {
			return fmt.Errorf("invalid --tolerance %q: must be at least 1s", o.Tolerance)
		}
	}
	header := strings.Trim(o.Header, " \t")
	// Accept a line pasted with its header name.
	if len(header) > len(verify.SignatureHeader) && strings.EqualFold(header[:len(verify.SignatureHeader)+1], verify.SignatureHeader+":") {
		header = strings.Trim(header[len(verify.SignatureHeader)+1:], " \t")
	}
	if header == "" {
		return fmt.Errorf("--header is required: the captured %s value, such as 't=1744831201,v=feef…'", verify.SignatureHeader)
	}
	body, err := readInput(o.File, stdin)
	if err != nil {
		return err
	}

	v, err := verify.New([]string{secret}, "", tolerance)
	if err != nil {
		return err
	}
	now := cmdNow()
	sig, matched, err := v.VerifySignature(header, body, now)
	if err != nil {
		var f *Failure
		if !errors.As(err, &f) {
			return err
		}
		fmt.Fprintf(stdout, "invalid: %s (%s): %s\n", failureKinds[f.Reason], f.Reason, f.Msg)
		if f.Reason == ReasonSignatureMismatch && bytes.HasSuffix(body, []byte("\n")) {
			fmt.Fprintln(stdout, "hint: the body ends with a newline; the MAC covers the exact bytes, "+
				"so a newline added by echo or an editor breaks it (use printf, or --file with the bytes as captured)")
		}
		return shownError{fmt.Errorf("signature is invalid: %w", f)}
	}
	age := now.Unix() - sig.Timestamp
	when := verify.HumanSeconds(age) + " old"
	if age < 0 {
		when = verify.HumanSeconds(-age) + " in the future"
	}
	_, err = fmt.Fprintf(stdout, "valid: v %d of %d matched; t=%s is %s (tolerance %s)\n",
		matched+1, len(sig.V), sig.T, when, tolerance)
	return err
}

// ---------------------------------------------------------------------
// caddy reready send

// sendOptions are the flags of `caddy reready send`.
type sendOptions struct {
	URL            string // where to POST; required
	Secret         string // "" means $REREADY_SIGNING_SECRET
	Token          string // appended as ?token= when set
	State          string // one of verify.States; required
	Test           bool
	DeviceReturnID string // "" means a fresh random UUID v4
	SerialNumber   string // "" means null
	TicketURL      string // "" means null
}

// sendPayload is a ReReady delivery, with the fields in the vendor's order and
// absent optional values as JSON null.
type sendPayload struct {
	DeviceReturnID string  `json:"device_return_id"`
	SerialNumber   *string `json:"serial_number"`
	State          string  `json:"state"`
	Test           bool    `json:"test"`
	TicketURL      *string `json:"ticket_url"`
	URL            string  `json:"url"`
}

// runSend builds a payload, signs it, POSTs it and prints the answer. A
// transport error or an answer other than 2xx is an error.
func runSend(ctx context.Context, o sendOptions, stdout, stderr io.Writer) error {
	if !verify.KnownState(o.State) {
		what := "--state is required"
		if o.State != "" {
			what = fmt.Sprintf("unknown --state %q", o.State)
		}
		return fmt.Errorf("%s; want one of: %s", what, strings.Join(verify.States, ", "))
	}
	secret := o.Secret
	if secret == "" {
		secret = os.Getenv(envSecret)
	}
	if secret == "" && o.Token == "" {
		return fmt.Errorf("need a signing secret (--secret or $%s) or a --token, or both", envSecret)
	}
	if secret != "" {
		warnPrefix(secret, stderr)
	}
	target, err := sendURL(o.URL, o.Token)
	if err != nil {
		return err
	}
	body, err := json.Marshal(newPayload(o))
	if err != nil {
		return err
	}

	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target.String(), bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	signedAt := cmdNow()
	if secret != "" {
		req.Header.Set(verify.SignatureHeader, verify.Sign(secret, signedAt, body))
	}
	shown := redactURL(target)
	fmt.Fprintf(stdout, "POST %s\n%s\n\n", shown, body)

	client := &http.Client{
		Timeout: sendTimeout,
		// ReReady does not follow redirects; show them instead.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Do(req)
	if err != nil {
		// A *url.Error repeats the URL, token included; name it redacted.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("POST %s: %w", shown, err)
	}
	defer resp.Body.Close()
	answer, readErr := io.ReadAll(io.LimitReader(resp.Body, maxShownAnswer+1))
	fmt.Fprintf(stdout, "%s %s\n", resp.Proto, resp.Status)
	if loc := resp.Header.Get("Location"); loc != "" {
		fmt.Fprintf(stdout, "Location: %s (not followed)\n", loc)
	}
	if len(answer) > maxShownAnswer {
		answer = append(answer[:maxShownAnswer], "\n[answer truncated]"...)
	}
	if len(answer) > 0 {
		fmt.Fprintf(stdout, "%s\n", bytes.TrimSuffix(answer, []byte("\n")))
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		if resp.StatusCode >= 400 && resp.StatusCode <= 499 {
			rejectionHint(stderr, resp, answer, secret != "", o.Token != "", signedAt)
		}
		return fmt.Errorf("POST %s: answered %s", shown, resp.Status)
	}
	if readErr != nil {
		return fmt.Errorf("POST %s: reading the answer: %w", shown, readErr)
	}
	return nil
}

// reasonHints says, for each reason code a gateway may answer a refused
// delivery with, what most likely caused it when `send` built the
// delivery; "" for a code with nothing to add to the README's table.
var reasonHints = map[Reason]string{
	ReasonSignatureMismatch:  "the secret differs from the gateway's (the HMAC key is the whole secret, " + verify.SecretPrefix + " included), or something between changed the body",
	ReasonTimestampStale:     "this machine's clock and the gateway's differ by more than its tolerance (5m by default)",
	ReasonTimestampFuture:    "this machine's clock and the gateway's differ by more than its tolerance (5m by default)",
	ReasonSignatureMissing:   "no signature reached the gateway: sign with --secret (or $" + envSecret + "), or, if you did, something between dropped the header",
	ReasonSignatureDuplicate: "more than one signature header reached the gateway: something between added one",
	ReasonSignatureMalformed: "the signature header reached the gateway changed: something between altered it",
	ReasonTokenMissing:       "the gateway checks a ?token= parameter: pass --token",
	ReasonTokenDuplicate:     "the URL reached the gateway with more than one token parameter",
	ReasonTokenMismatch:      "--token differs from the gateway's token",
	ReasonPayloadEmpty:       "",
	ReasonPayloadInvalidJSON: "",
	ReasonPayloadMissing:     "",
	ReasonPayloadWrongType:   "",
	ReasonPayloadDuplicate:   "",
	ReasonPayloadBadString:   "",
	ReasonMethod:             "",
	ReasonBodyTooLarge:       "",
	ReasonBodyTimeout:        "",
	ReasonBodyRead:           "",
	ReasonReplayInFlight:     "the same delivery was being delivered at that moment",
}

// answeredReason is the reason code a refused delivery's answer names, or
// "": the body, as the README's opt-in handle_errors block answers it (or
// a reready_verify error message), or an X-ReReady-Reject-Reason header.
// Only a known code counts, so no other text of the answer is repeated.
func answeredReason(h http.Header, body []byte) Reason {
	text := strings.TrimSpace(string(body))
	if rest, ok := strings.CutPrefix(text, "reready_verify: "); ok {
		text, _, _ = strings.Cut(rest, ":")
	}
	for _, c := range []string{text, strings.TrimSpace(h.Get(hdrRejectReason))} {
		if _, ok := reasonHints[Reason(c)]; ok {
			return Reason(c)
		}
	}
	return ""
}

// rejectionHint explains a 4xx answer to `send` on stderr: the check that
// failed when the answer names it, else the usual causes of what was
// sent. It names neither the secret nor the token.
func rejectionHint(stderr io.Writer, resp *http.Response, answer []byte, signed, withToken bool, signedAt time.Time) {
	clock := fmt.Sprintf("this machine signed it at %s (t=%d)", signedAt.UTC().Format(time.RFC3339), signedAt.Unix())
	const readme = "to have the gateway answer which check failed, add the README's handle_errors block (under \"What the handler does\")"
	if r := answeredReason(resp.Header, answer); r != "" {
		hint := reasonHints[r]
		switch {
		case r == ReasonTimestampStale || r == ReasonTimestampFuture:
			hint += "; " + clock
		case hint == "":
			hint = "the README's table under \"What the handler does\" says which check that is"
		}
		fmt.Fprintf(stderr, "hint: the gateway refused it as %s: %s\n", r, hint)
		return
	}
	if resp.StatusCode != http.StatusUnauthorized {
		fmt.Fprintf(stderr, "hint: the gateway answered %s without a reason code: check that --url is a path reready_verify guards; %s\n",
			resp.Status, readme)
		return
	}
	fmt.Fprintln(stderr, "hint: the gateway answered 401 and did not say which check failed; the usual causes:")
	if signed {
		fmt.Fprintln(stderr, "  - "+reasonHints[ReasonSignatureMismatch])
		fmt.Fprintln(stderr, "  - "+reasonHints[ReasonTimestampStale]+"; "+clock)
	} else {
		fmt.Fprintln(stderr, "  - the gateway checks a signature: pass --secret or set $"+envSecret)
	}
	if withToken {
		fmt.Fprintln(stderr, "  - "+reasonHints[ReasonTokenMismatch])
	} else {
		fmt.Fprintln(stderr, "  - the gateway checks a ?token= parameter too: pass --token")
	}
	fmt.Fprintln(stderr, "  "+strings.ToUpper(readme[:1])+readme[1:])
}

// newPayload fills a payload from the send options.
func newPayload(o sendOptions) sendPayload {
	p := sendPayload{
		DeviceReturnID: o.DeviceReturnID,
		State:          o.State,
		Test:           o.Test,
	}
	if p.DeviceReturnID == "" {
		p.DeviceReturnID = newUUIDv4()
	}
	p.URL = deviceReturnURLPrefix + url.PathEscape(p.DeviceReturnID)
	if o.SerialNumber != "" {
		p.SerialNumber = &o.SerialNumber
	}
	if o.TicketURL != "" {
		p.TicketURL = &o.TicketURL
	}
	return p
}

// newUUIDv4 returns a random RFC 9562 version 4 UUID in its 36-character form.
func newUUIDv4() string {
	var b [16]byte
	rand.Read(b[:])         // never fails: it crashes the program instead (Go 1.24+)
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 9562 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// sendURL parses --url and appends token=<token>, keeping the existing
// query byte for byte.
func sendURL(raw, token string) (*url.URL, error) {
	if raw == "" {
		return nil, errors.New("--url is required: the webhook endpoint to POST to")
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("invalid --url %q: want an absolute http:// or https:// URL", redactRawURL(raw))
	}
	if token == "" {
		return u, nil
	}
	if hasTokenParam(u.RawQuery) {
		return nil, fmt.Errorf("invalid --url %q: it already has a token parameter; drop it or --token", redactRawURL(raw))
	}
	if u.RawQuery != "" {
		u.RawQuery += "&"
	}
	u.RawQuery += "token=" + url.QueryEscape(token)
	return u, nil
}

// hasTokenParam reports whether a raw query has a token parameter, by the
// handler's own rule (verify.SplitToken).
func hasTokenParam(rawQuery string) bool {
	_, tokens := verify.SplitToken(rawQuery)
	return len(tokens) > 0
}

// redactURL formats u for output with any password and token hidden.
func redactURL(u *url.URL) string {
	c := *u
	if c.RawQuery != "" {
		params := strings.Split(c.RawQuery, "&")
		for i, param := range params {
			key, _, _ := strings.Cut(param, "=")
			if k, err := url.QueryUnescape(key); err == nil && k == "token" {
				params[i] = key + "=REDACTED"
			}
		}
		c.RawQuery = strings.Join(params, "&")
	}
	return c.Redacted()
}

// redactRawURL is redactURL for text that may not parse as a URL.
func redactRawURL(raw string) string {
	if u, err := url.Parse(raw); err == nil {
		return redactURL(u)
	}
	if i := strings.IndexAny(raw, "?#"); i >= 0 {
		return raw[:i] + "?…"
	}
	return raw
}

// ---------------------------------------------------------------------
// Shared helpers

// shownError is a failure the command has already printed for the user;
// it makes the command exit 1 without printing it again.
type shownError struct{ err error }

func (e shownError) Error() string { return e.err.Error() }
func (e shownError) Unwrap() error { return e.err }

// needSecret returns the --secret value or, without one, $REREADY_SIGNING_SECRET.
func needSecret(flag string, stderr io.Writer) (string, error) {
	secret := flag
	if secret == "" {
		secret = os.Getenv(envSecret)
	}
	if secret == "" {
		return "", fmt.Errorf("no signing secret: pass --secret or set $%s", envSecret)
	}
	warnPrefix(secret, stderr)
	return secret, nil
}

// warnPrefix warns, as the handler does, about a secret without ssk_: a
// secret copied without its prefix is the commonest cause of a mismatch.
func warnPrefix(secret string, stderr io.Writer) {
	if !strings.HasPrefix(secret, verify.SecretPrefix) {
		fmt.Fprintf(stderr, "warning: the secret does not start with %s; ReReady's do, and the HMAC key is the whole secret, %s included\n",
			verify.SecretPrefix, verify.SecretPrefix)
	}
}

// readInput reads the body, byte for byte, from file or, for "" or "-", stdin.
func readInput(file string, stdin io.Reader) ([]byte, error) {
	if file == "" || file == "-" {
		body, err := io.ReadAll(stdin)
		if err != nil {
			return nil, fmt.Errorf("reading the body from stdin: %w", err)
		}
		return body, nil
	}
	body, err := os.ReadFile(file)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the path is already named
		}
		return nil, fmt.Errorf("invalid --file %q: %w", file, err)
	}
	return body, nil
}

// ---------------------------------------------------------------------
// Cobra wiring

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "reready",
		Usage: "sign|send|verify|deliveries|queue|show",
		Short: "Signs, sends and verifies ReReady webhook deliveries",
		Long: `
Tools for the reready_verify handler, built on the same signing and checking
code:

  sign        prints the X-ReReady-Signature-512 value for a body
  send        POSTs a signed ReReady-shaped delivery to an endpoint
  verify      checks a captured X-ReReady-Signature-512 value against a body
  deliveries  shows the delivery journal of a running gateway
  queue       lists, retries and drops a running gateway's queued deliveries
  show        shows one delivery: its journal entries and, when kept, its body
  replay      sends past deliveries again from the history (after an app bug)
  pause       holds deliveries in the queue until resumed (--status: what is paused)
  resume      ends a pause; held deliveries go, in each return's order

--secret defaults to the REREADY_SIGNING_SECRET environment variable, so the
secret need not appear on the command line or in shell history. The HMAC key
is the whole secret, ssk_ included. No command prints the secret, the token
or an expected MAC.

Bodies are read from --file, or from stdin without it (or with --file -),
and signed byte for byte: "echo" adds a newline that "printf" does not.

Examples:

  $ export REREADY_SIGNING_SECRET=ssk_...
  $ printf '%s' "$BODY" | caddy reready sign
  $ caddy reready send --url https://hooks.example.com/reready --state complete --test
  $ caddy reready verify --header 't=1744831201,v=feef...' --file body.json

The exit status is 0 on success and 1 on any failure: a bad flag, a refused
or failed delivery, or an invalid signature.
`,
		CobraFunc: func(cmd *cobra.Command) {
			// Runnable, so that an unknown subcommand is an error rather
			// than a help page and exit status 0.
			cmd.Args = cobra.NoArgs
			cmd.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
			cmd.DisableFlagsInUseLine = true
			// For this command and its subcommands, point at this
			// module's documentation instead of Caddy's command-line page,
			// which does not describe them.
			cmd.SetHelpTemplate(cmd.HelpTemplate() + rereadyDocsFooter)

			sign := &cobra.Command{
				Use:   "sign [--secret <key>] [--timestamp <unix>] [--file <path>]",
				Short: "Prints the X-ReReady-Signature-512 value for a body",
				Long: `
Prints the X-ReReady-Signature-512 value, t=<unix>,v=<hex HMAC-SHA512>, that
ReReady would send with the body read from --file or stdin.

--timestamp is the signing time in unix seconds (default: now).
`,
				Args:                  cobra.NoArgs,
				DisableFlagsInUseLine: true,
				RunE: cobraRun(func(fl caddycmd.Flags, c *cobra.Command) error {
					return runSign(signOptions{
						Secret:    fl.String("secret"),
						Timestamp: fl.String("timestamp"),
						File:      fl.String("file"),
					}, c.InOrStdin(), c.OutOrStdout(), c.ErrOrStderr())
				}),
			}
			sign.Flags().String("secret", "", "Signing secret key (default $"+envSecret+")")
			sign.Flags().String("timestamp", "", "Signing time in unix seconds (default now)")
			sign.Flags().String("file", "", "Read the body from this file instead of stdin")
			cmd.AddCommand(sign)

			send := &cobra.Command{
				Use:   "send --url <url> [--secret <key>] [--token <token>] --state <state> [--test] [--device-return-id <id>] [--serial-number <sn>] [--ticket-url <url>]",
				Short: "POSTs a signed ReReady delivery to an endpoint",
				Long: `
Builds a payload shaped like ReReady's, with all six fields in its order and
null for absent values:

  {"device_return_id":"<id>","serial_number":null,"state":"<state>",
   "test":false,"ticket_url":null,"url":"https://www.reready.co/device_returns/<id>"}

signs it with the secret (header X-ReReady-Signature-512), POSTs it to --url
as application/json, and prints the request, the answer's status and body.
At least one of a secret and --token is needed; --token is added to the URL
as ?token=<token>, keeping any other query parameters.

--state is one of ReReady's seven states:

  pending_outbound_shipment           waiting for fulfillment of the empty box
  pending_outbound_shipment_delivery  waiting on the empty box to be delivered
  pending_return_shipment             waiting on the employee to return the device
  pending_return_shipment_delivery    waiting for the device to be delivered
  failed                              not completable (carrier failure, address...)
  not_returned                        the employee failed to return the device
  complete                            successfully returned

--device-return-id defaults to a fresh random UUID. An empty --serial-number
or --ticket-url sends null.

Redirects are not followed. The command fails on a transport error, after 30s,
or on an answer other than 2xx. On a 4xx answer it prints a hint on stderr:
what the failed check means when the gateway names it (its reason code, as
the README's opt-in handle_errors block answers it), else the usual causes:
a secret or token that differs from the gateway's, or a clock that is off.
`,
				Args:                  cobra.NoArgs,
				DisableFlagsInUseLine: true,
				RunE: cobraRun(func(fl caddycmd.Flags, c *cobra.Command) error {
					return runSend(c.Context(), sendOptions{
						URL:            fl.String("url"),
						Secret:         fl.String("secret"),
						Token:          fl.String("token"),
						State:          fl.String("state"),
						Test:           fl.Bool("test"),
						DeviceReturnID: fl.String("device-return-id"),
						SerialNumber:   fl.String("serial-number"),
						TicketURL:      fl.String("ticket-url"),
					}, c.OutOrStdout(), c.ErrOrStderr())
				}),
			}
			send.Flags().String("url", "", "Endpoint to POST to (required)")
			send.Flags().String("secret", "", "Signing secret key (default $"+envSecret+")")
			send.Flags().String("token", "", "Value of the ?token= parameter to add")
			send.Flags().String("state", "", "Event state (required)")
			send.Flags().Bool("test", false, "Mark the delivery as a test (\"test\": true)")
			send.Flags().String("device-return-id", "", "Device return id (default a random UUID)")
			send.Flags().String("serial-number", "", "Serial number (default null)")
			send.Flags().String("ticket-url", "", "Ticket URL (default null)")
			cmd.AddCommand(send)

			verifyCmd := &cobra.Command{
				Use:   "verify [--secret <key>] [--tolerance <duration>] --header <value> [--file <path>]",
				Short: "Checks a captured signature against a body",
				Long: `
Checks a captured X-ReReady-Signature-512 value against the body read from
--file or stdin, with the handler's rules and the current time, and prints
either which v matched and how old t is, or which check failed with its
reason code: signature_malformed, timestamp_stale, timestamp_future or
signature_mismatch. The command fails when the signature is invalid.

--header may include the "X-ReReady-Signature-512:" name.
--tolerance is the largest accepted |now - t| (default 5m, at least 1s).
`,
				Args:                  cobra.NoArgs,
				DisableFlagsInUseLine: true,
				RunE: cobraRun(func(fl caddycmd.Flags, c *cobra.Command) error {
					return runVerify(verifyOptions{
						Secret:    fl.String("secret"),
						Tolerance: fl.String("tolerance"),
						Header:    fl.String("header"),
						File:      fl.String("file"),
					}, c.InOrStdin(), c.OutOrStdout(), c.ErrOrStderr())
				}),
			}
			verifyCmd.Flags().String("secret", "", "Signing secret key (default $"+envSecret+")")
			verifyCmd.Flags().String("tolerance", DefaultTolerance.String(), "Largest accepted |now - t|")
			verifyCmd.Flags().String("header", "", "Captured "+verify.SignatureHeader+" value (required)")
			verifyCmd.Flags().String("file", "", "Read the body from this file instead of stdin")
			cmd.AddCommand(verifyCmd)
			cmd.AddCommand(opsCommands()...)
			cmd.AddCommand(pauseCommands()...)
		},
	})
}

// rereadyDocsFooter ends the help of `caddy reready` and its subcommands.
const rereadyDocsFooter = `
Full documentation (Caddyfile, reason codes, headers, this command): the
README.md of the module github.com/reready-verify/caddy-reready-verify
`

// cobraRun adapts a subcommand to cobra the way Caddy's own commands are:
// errors go through Caddy's logger and make the process exit 1. A
// shownError, already printed, only sets the exit status.
func cobraRun(run func(caddycmd.Flags, *cobra.Command) error) func(*cobra.Command, []string) error {
	return func(c *cobra.Command, args []string) error {
		var shown error
		err := caddycmd.WrapCommandFuncForCobra(func(fl caddycmd.Flags) (int, error) {
			err := run(fl, c)
			if errors.As(err, new(shownError)) {
				shown = err
				return caddy.ExitCodeFailedStartup, nil
			}
			if err != nil {
				return caddy.ExitCodeFailedStartup, err
			}
			return caddy.ExitCodeSuccess, nil
		})(c, args)
		if shown != nil {
			c.SilenceErrors = true // cobra would print "Error: ..." once more
			return shown
		}
		return err
	}
}
