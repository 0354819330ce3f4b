package rereadyverify

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"text/tabwriter"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

// This file is `caddy reready pause` and `caddy reready resume`, through
// the admin endpoint as the queue commands are (pause.go serves them).

// pauseOptions are the flags of `caddy reready pause` and `resume`.
type pauseOptions struct {
	adminOptions
	Action string // "pause", "resume" or "status"
	Path   string // "" for every path
	JSON   bool
}

// runPause pauses, resumes or shows what is paused, and prints the state
// the gateway answered.
func runPause(o pauseOptions, stdout io.Writer) error {
	method, uri := http.MethodPost, "/reready/"+o.Action
	var body []byte
	switch o.Action {
	case "status":
		if o.Path != "" {
			return fmt.Errorf("--status shows every paused path; it takes no --path")
		}
		method, uri = http.MethodGet, "/reready/pause"
	case "pause", "resume":
		if o.Path != "" {
			body, _ = json.Marshal(pauseRequest{Path: o.Path})
		}
	default:
		return fmt.Errorf("unknown action %q", o.Action)
	}
	var data json.RawMessage
	if err := adminSend(o.adminOptions, method, uri, body, &data); err != nil {
		return err
	}
	var s PauseState
	if err := json.Unmarshal(data, &s); err != nil {
		return fmt.Errorf("the admin endpoint's answer to %s is not what reready expects (is this version's reready module in this Caddy?): %v", uri, err)
	}
	if o.JSON {
		return writeIndentedJSON(stdout, json.RawMessage(data))
	}
	switch o.Action {
	case "pause":
		fmt.Fprintf(stdout, "paused %s: deliveries are queued (202, reason paused) until resumed\n", pathOrEvery(o.Path))
	case "resume":
		fmt.Fprintf(stdout, "resumed %s: held deliveries go now, in each return's order\n", pathOrEvery(o.Path))
		if p, ok := s.has(pauseAll); ok && o.Path != "" && o.Path != pauseAll {
			fmt.Fprintf(stdout, "note: every path is still paused (since %s); resume without --path to end that\n", p.Since.Format(time.RFC3339))
		}
	}
	if len(s.Paused) == 0 {
		_, err := fmt.Fprintln(stdout, "nothing is paused")
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PAUSED PATH\tSINCE\tBY")
	for _, p := range s.Paused {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", terminalSafe(p.Path), p.Since.UTC().Format(time.RFC3339), orDash(terminalSafe(p.By)))
	}
	return tw.Flush()
}

func pathOrEvery(p string) string {
	if p == "" || p == pauseAll {
		return "every path"
	}
	return terminalSafe(p)
}

// pauseCommands are the pause and resume subcommands.
func pauseCommands() []*cobra.Command {
	const common = `
Deliveries on a paused path are stored in the queue and answered 202
(journal: queued, reason paused); none is forwarded or redelivered until
it is resumed. The pause is kept in Caddy's storage: it holds for every
gateway on that storage, and across restarts, until resumed (on any of
them). Resuming sends the held deliveries in each return's order.

Pausing needs a reready_verify handler with queue on in the running
config (else the gateway refuses with 409: nothing would hold the
deliveries). A handler without queue forwards deliveries on a paused path
and logs a warning once per path.

The admin endpoint is --address, or the one --config names, or
localhost:2019.
`
	pause := &cobra.Command{
		Use:   "pause [--path <path>] [--status] [--json] [--address <admin>]",
		Short: "Holds deliveries in the queue (for a path, or all) until resumed; --status shows what is paused",
		Long: `
Pauses deliveries to --path (the request path, e.g. /webhooks/reready), or
to every path without it, and prints what is paused: path ("*" is every
path), since when and by whom (the remote address of the admin request).

caddy reready pause --status only prints what is paused.
` + common,
		Args:                  cobra.NoArgs,
		DisableFlagsInUseLine: true,
		RunE: cobraRun(func(fl caddycmd.Flags, c *cobra.Command) error {
			o := pauseOptions{adminOptions: adminFlags(fl), Action: "pause", Path: fl.String("path"), JSON: fl.Bool("json")}
			if fl.Bool("status") {
				o.Action = "status"
			}
			return runPause(o, c.OutOrStdout())
		}),
	}
	pause.Flags().String("path", "", "Only deliveries to this request path (default: every path)")
	pause.Flags().Bool("status", false, "Only show what is paused")
	pause.Flags().Bool("json", false, "Print JSON")
	addAdminFlags(pause)

	resume := &cobra.Command{
		Use:   "resume [--path <path>] [--json] [--address <admin>]",
		Short: "Ends a pause: held deliveries go, in each return's order",
		Long: `
Resumes deliveries to --path, or without it ends every pause (of every
path and of each path paused on its own), and prints what is still
paused. A path paused only through a pause of every path stays paused
until that is resumed.
` + common,
		Args:                  cobra.NoArgs,
		DisableFlagsInUseLine: true,
		RunE: cobraRun(func(fl caddycmd.Flags, c *cobra.Command) error {
			return runPause(pauseOptions{adminOptions: adminFlags(fl), Action: "resume", Path: fl.String("path"), JSON: fl.Bool("json")}, c.OutOrStdout())
		}),
	}
	resume.Flags().String("path", "", "Only deliveries to this request path (default: every path)")
	resume.Flags().Bool("json", false, "Print JSON")
	addAdminFlags(resume)
	return []*cobra.Command{pause, resume}
}
