package rereadyverify

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

// This file is `caddy reready replay`: send a range of past deliveries
// again (replay_range.go), after a dry run that shows how many, and a
// confirmation unless --yes.

// replayOptions are the flags of `caddy reready replay`.
type replayOptions struct {
	adminOptions
	Request ReplayRequest // without DryRun
	DryRun  bool          // only count
	Yes     bool          // no confirmation
	JSON    bool
}

// adminPost POSTs v as JSON to uri and decodes the JSON answer into out.
func adminPost(o adminOptions, uri string, v, out any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return adminSend(o, http.MethodPost, uri, body, out)
}

// adminSend sends body (JSON; nil: none) to uri with method and decodes
// the JSON answer into out (a *json.RawMessage keeps it as it came).
func adminSend(o adminOptions, method, uri string, body []byte, out any) error {
	addr, err := caddycmd.DetermineAdminAPIAddress(o.Address, nil, o.Config, o.Adapter)
	if err != nil {
		return err
	}
	var hdr http.Header
	var rd io.Reader
	if body != nil {
		hdr, rd = http.Header{"Content-Type": {"application/json"}}, bytes.NewReader(body)
	}
	resp, err := caddycmd.AdminAPIRequest(addr, method, uri, hdr, rd)
	if err != nil {
		return fmt.Errorf("admin endpoint %s: %w", addr, adminError(err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading the admin endpoint's answer: %w", err)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("the admin endpoint's answer to %s is not what reready expects (is this version's reready module in this Caddy?): %v", uri, err)
	}
	return nil
}

// runReplay asks for a dry run, shows the count, asks for confirmation
// (unless Yes) on stdin, then replays.
func runReplay(o replayOptions, stdin io.Reader, stdout, stderr io.Writer) error {
	req := o.Request
	req.DryRun = true
	var dry ReplayResult
	if err := adminPost(o.adminOptions, "/reready/replay", req, &dry); err != nil {
		return err
	}
	if o.DryRun || dry.Count == 0 {
		if o.JSON {
			return writeIndentedJSON(stdout, dry)
		}
		fmt.Fprintf(stdout, "%s selected with a kept body\n", plural(dry.Count, "delivery", "deliveries"))
		for _, id := range dry.IDs {
			fmt.Fprintln(stdout, "  "+id)
		}
		printSkipped(stdout, dry.Skipped)
		warnPartial(stderr, int(dry.Unreadable))
		return nil
	}
	if !o.Yes {
		fmt.Fprintf(stderr, "Replay %s? They go through the queue again, in order per return, with X-ReReady-Replay. [y/N] ",
			plural(dry.Count, "delivery", "deliveries"))
		line, _ := bufio.NewReader(stdin).ReadString('\n')
		if a := strings.ToLower(strings.TrimSpace(line)); a != "y" && a != "yes" {
			return errors.New("not replayed: not confirmed (--yes skips the question)")
		}
	}
	req.DryRun = false
	var res ReplayResult
	if err := adminPost(o.adminOptions, "/reready/replay", req, &res); err != nil {
		return err
	}
	if o.JSON {
		return writeIndentedJSON(stdout, res)
	}
	fmt.Fprintf(stdout, "replayed %s (replay %s): queued again, in order per return\n", plural(res.Count, "delivery", "deliveries"), res.ReplayID)
	printSkipped(stdout, res.Skipped)
	warnPartial(stderr, int(res.Unreadable))
	return nil
}

func printSkipped(w io.Writer, skipped []ReplaySkip) {
	if len(skipped) == 0 {
		return
	}
	fmt.Fprintf(w, "skipped %d:\n", len(skipped))
	for _, s := range skipped {
		fmt.Fprintf(w, "  %s: %s\n", s.ID, terminalSafe(s.Why))
	}
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// replayCommand is `caddy reready replay`.
func replayCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "replay [--since <when>] [--until <when>] [--return-id <id>] [--state <state>] [--outcome <outcome>] [--id <delivery_id>]... [--dry-run] [--yes] [--json] [--address <admin>]",
		Short: "Sends past deliveries again, from the history (after an app bug)",
		Long: `
Selects past deliveries from a running gateway's journal and history (the
reready global option's history, with bodies) by --id, or by a range
(--since, --until: an RFC 3339 time or a duration back from now, 2h, 7d)
and filters (--return-id, --state, --outcome), and puts each whose body is
kept back on the queue. They go through the same route, backoff and
per-return order as queued deliveries, carrying the same
X-ReReady-Delivery-Id and X-ReReady-Replay: <replay id>; replay suppression
does not stop them. The app does not get the signature header (it is never
kept).

It first asks the gateway how many it would replay and asks for
confirmation on stdin (--yes skips it); --dry-run only shows them.

The admin endpoint is --address, or the one --config names, or
localhost:2019.
`,
		Args:                  cobra.NoArgs,
		DisableFlagsInUseLine: true,
		RunE: cobraRun(func(fl caddycmd.Flags, cmd *cobra.Command) error {
			ids, _ := cmd.Flags().GetStringArray("id")
			o := replayOptions{
				adminOptions: adminFlags(fl),
				Request: ReplayRequest{IDs: ids, Since: fl.String("since"), Until: fl.String("until"),
					ReturnID: fl.String("return-id"), State: fl.String("state"), Outcome: fl.String("outcome")},
				DryRun: fl.Bool("dry-run"), Yes: fl.Bool("yes"), JSON: fl.Bool("json"),
			}
			return runReplay(o, cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr())
		}),
	}
	c.Flags().String("since", "", "From then on: an RFC 3339 time or a duration back from now (2h, 7d)")
	c.Flags().String("until", "", "Up to then (same forms as --since)")
	c.Flags().String("return-id", "", "Only this device_return_id")
	c.Flags().String("state", "", "Only this state")
	c.Flags().String("outcome", "", "Only deliveries with an entry of this outcome")
	c.Flags().StringArray("id", nil, "A delivery id (repeat for more)")
	c.Flags().Bool("dry-run", false, "Only show what would be replayed")
	c.Flags().Bool("yes", false, "Do not ask for confirmation")
	c.Flags().Bool("json", false, "Print JSON")
	addAdminFlags(c)
	return c
}
