package rereadyverify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os/signal"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/reready-verify/caddy-reready-verify/internal/verify"
	"github.com/spf13/cobra"
)

// This file is `caddy reready deliveries` and `caddy reready queue`: the
// journal and the queue of a running gateway, read through its admin
// endpoint the way Caddy's own commands reach it (--address, or the admin
// address of --config).

// adminOptions locate the admin endpoint.
type adminOptions struct {
	Address string // admin address; "" means from Config, else Caddy's default
	Config  string // config file to read the admin address from
	Adapter string // its adapter
}

// adminRequest is how the commands reach the admin API; tests replace it.
var adminRequest = func(o adminOptions, method, uri string) (*http.Response, error) {
	addr, err := caddycmd.DetermineAdminAPIAddress(o.Address, nil, o.Config, o.Adapter)
	if err != nil {
		return nil, err
	}
	resp, err := caddycmd.AdminAPIRequest(addr, method, uri, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("admin endpoint %s: %w", addr, adminError(err))
	}
	return resp, nil
}

// adminErrorJSON finds the JSON error body in caddycmd's error text.
var adminErrorJSON = regexp.MustCompile(`HTTP (\d+): (\{.*\})\s*$`)

// adminError turns "caddy responded with error: HTTP 404: {"error":"…"}"
// into "… (HTTP 404)".
func adminError(err error) error {
	m := adminErrorJSON.FindStringSubmatch(err.Error())
	if m == nil {
		return err
	}
	var body struct {
		Error string `json:"error"`
	}
	if json.Unmarshal([]byte(m[2]), &body) != nil || body.Error == "" {
		return err
	}
	return fmt.Errorf("%s (HTTP %s)", body.Error, m[1])
}

// adminJSON GETs uri and decodes its JSON answer into v; it returns the
// journal epoch header too.
func adminJSON(o adminOptions, method, uri string, v any) (epoch string, err error) {
	resp, err := adminRequest(o, method, uri)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return "", fmt.Errorf("reading the admin endpoint's answer: %w", err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return "", fmt.Errorf("the admin endpoint's answer to %s is not what reready expects (is the reready module in this Caddy?): %v", uri, err)
	}
	return resp.Header.Get(journalHeader), nil
}

// ---------------------------------------------------------------------
// caddy reready deliveries

// deliveriesOptions are the flags of `caddy reready deliveries`.
type deliveriesOptions struct {
	adminOptions
	ReturnID string
	State    string
	Outcome  string
	Test     bool // only test events
	NoTest   bool // no test events
	Limit    int
	JSON     bool
	Follow   bool
	Poll     time.Duration // --follow's polling interval; 0 means 1s
	Since    string        // a range, from the history too (command_history.go)
	Until    string
}

// query is the API request: the newest Limit entries, or with follow,
// every entry after the given sequence number.
func (o deliveriesOptions) query(after uint64, follow bool) string {
	q := url.Values{}
	if o.ReturnID != "" {
		q.Set("return_id", o.ReturnID)
	}
	if o.State != "" {
		q.Set("state", o.State)
	}
	if o.Outcome != "" {
		q.Set("outcome", o.Outcome)
	}
	if o.Test || o.NoTest {
		q.Set("test", strconv.FormatBool(o.Test))
	}
	if follow {
		q.Set("limit", strconv.Itoa(maxDeliveryLimit))
		q.Set("after", strconv.FormatUint(after, 10))
	} else {
		q.Set("limit", strconv.Itoa(o.Limit))
	}
	return "/reready/deliveries?" + q.Encode()
}

// runDeliveries prints the journal, oldest first; with Follow it goes on
// printing new entries until ctx ends, across reloads and restarts.
func runDeliveries(ctx context.Context, o deliveriesOptions, stdout, stderr io.Writer) error {
	if o.Since != "" || o.Until != "" {
		return runDeliveriesRange(o, stdout, stderr)
	}
	if o.Outcome != "" && !slices.Contains(Outcomes, o.Outcome) {
		return fmt.Errorf("invalid --outcome %q: want one of %s", o.Outcome, strings.Join(Outcomes, ", "))
	}
	if o.Limit < 1 || o.Limit > maxDeliveryLimit {
		return fmt.Errorf("invalid --limit %d: want 1 to %d", o.Limit, maxDeliveryLimit)
	}
	if o.Test && o.NoTest {
		return errors.New("--test and --no-test exclude each other: --test shows only test events, --no-test hides them")
	}
	var got []Delivery
	epoch, err := adminJSON(o.adminOptions, http.MethodGet, o.query(0, false), &got)
	if err != nil {
		return err
	}
	got = o.keepTest(got)
	slices.Reverse(got)
	tw := newDeliveryTable(stdout, o.JSON && o.Follow)
	if o.JSON && !o.Follow {
		return writeIndentedJSON(stdout, got)
	}
	tw.rows(got)
	if !o.Follow {
		if len(got) == 0 {
			fmt.Fprintln(stderr, "no deliveries recorded yet (the journal is in memory, per process)")
		}
		return nil
	}

	poll := o.Poll
	if poll <= 0 {
		poll = time.Second
	}
	last := lastSeq(got)
	down := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(poll):
		}
		var fresh []Delivery
		e, err := adminJSON(o.adminOptions, http.MethodGet, o.query(last, true), &fresh)
		if err != nil {
			if !down {
				fmt.Fprintf(stderr, "waiting for the admin endpoint: %v\n", err)
				down = true
			}
			continue
		}
		if down {
			fmt.Fprintln(stderr, "admin endpoint back; following")
			down = false
		}
		if e != epoch {
			// Another process (a restart): its sequence starts again, so
			// the next poll asks for all of it.
			fmt.Fprintln(stderr, "Caddy restarted; its journal started afresh")
			epoch, last = e, 0
			continue
		}
		slices.Reverse(fresh)
		if len(fresh) > 0 && last > 0 && fresh[0].Seq > last+1 && o.ReturnID == "" && o.State == "" && o.Outcome == "" && !o.Test && !o.NoTest {
			fmt.Fprintf(stderr, "(%d entries were dropped from the journal before they could be shown)\n", fresh[0].Seq-last-1)
		}
		if len(fresh) > 0 {
			last = fresh[len(fresh)-1].Seq
		}
		tw.rows(o.keepTest(fresh))
	}
}

// keepTest applies --test and --no-test to what the gateway answered as
// well: a gateway older than the test= filter ignores it.
func (o deliveriesOptions) keepTest(ds []Delivery) []Delivery {
	if !o.Test && !o.NoTest {
		return ds
	}
	return slices.DeleteFunc(ds, func(d Delivery) bool { return d.Test != o.Test })
}

// deliveryTable prints journal entries as an aligned table, or as JSON
// lines when following with --json.
type deliveryTable struct {
	out       io.Writer
	jsonLines bool
	header    bool
}

func newDeliveryTable(out io.Writer, jsonLines bool) *deliveryTable {
	return &deliveryTable{out: out, jsonLines: jsonLines}
}

// deliveryColumns are the table's columns and their widths in runes. They
// are fixed, not sized to the rows, so that rows printed poll after poll
// by --follow line up with the header printed first; a longer value is
// clipped with an ellipsis. The widths fit the longest documented value
// (a UUID return id, pending_outbound_shipment_delivery,
// replay_store_unavailable).
var deliveryColumns = []struct {
	name  string
	width int
}{
	{"TIME", len("2006-01-02 15:04:05Z")},
	{"OUTCOME", len("redelivered (test)")},
	{"STATUS", len("STATUS")},
	{"STATE", len("pending_outbound_shipment_delivery")},
	{"RETURN ID", len("9f86d081-884c-4d65-9a2f-eaa0c55ad015")},
	{"ATTEMPT", len("ATTEMPT")},
	{"MS", len("123456.7")}, // up to 16 minutes
	{"REASON", len("replay_store_unavailable")},
}

// testMark follows the outcome of a test event ("test": true in its
// payload), which is otherwise listed just like a real delivery.
const testMark = " (test)"

// columnGap separates the table's columns.
const columnGap = "  "

func (t *deliveryTable) rows(ds []Delivery) {
	if len(ds) == 0 {
		return
	}
	if t.jsonLines {
		enc := json.NewEncoder(t.out)
		for _, d := range ds {
			_ = enc.Encode(d)
		}
		return
	}
	var b strings.Builder
	if !t.header {
		names := make([]string, len(deliveryColumns))
		for i, c := range deliveryColumns {
			names[i] = c.name
		}
		writeColumns(&b, names)
		t.header = true
	}
	for _, d := range ds {
		when := d.Time
		if ts, err := time.Parse(time.RFC3339Nano, d.Time); err == nil {
			when = ts.UTC().Format("2006-01-02 15:04:05Z")
		}
		outcome := terminalSafe(d.Outcome)
		if d.Test {
			outcome += testMark
		}
		writeColumns(&b, []string{terminalSafe(when), outcome, strconv.Itoa(d.Status),
			orDash(terminalSafe(d.State)), orDash(terminalSafe(d.DeviceReturnID)), strconv.Itoa(d.Attempt),
			strconv.FormatFloat(d.DurationMS, 'f', 1, 64), orDash(terminalSafe(d.Reason))})
	}
	_, _ = io.WriteString(t.out, b.String())
}

// writeColumns writes one line of the deliveries table: each cell clipped
// to its column's width and padded to it, the last one not padded.
func writeColumns(b *strings.Builder, cells []string) {
	for i, cell := range cells {
		w := deliveryColumns[i].width
		cell = fitWidth(cell, w)
		b.WriteString(cell)
		if i < len(cells)-1 {
			b.WriteString(strings.Repeat(" ", w-utf8.RuneCountInString(cell)))
			b.WriteString(columnGap)
		}
	}
	b.WriteByte('\n')
}

// fitWidth clips s to at most w runes, the last of a clipped one an
// ellipsis. (verify.Clip counts bytes; a column counts runes.)
func fitWidth(s string, w int) string {
	if utf8.RuneCountInString(s) <= w {
		return s
	}
	r := []rune(s)
	return string(r[:w-1]) + "…"
}

// ---------------------------------------------------------------------
// caddy reready queue

// queueOptions are the flags and arguments of `caddy reready queue`.
type queueOptions struct {
	adminOptions
	Action string // list, retry or drop
	ID     string // for retry and drop
	JSON   bool
}

// queueListItem is a queue item as this command reads it from the admin
// API: its own type rather than QueueItem, so that it decodes gateways of
// other versions: held_behind is absent from older ones, and their
// last_status is 0 rather than null before the first attempt.
type queueListItem struct {
	ID             string  `json:"id"`
	Status         string  `json:"status"`
	DeviceReturnID string  `json:"device_return_id"`
	State          string  `json:"state"`
	ReceivedAt     string  `json:"received_at"`
	Attempts       int     `json:"attempts"`
	NextAttemptAt  *string `json:"next_attempt_at"`
	HeldBehind     *string `json:"held_behind"` // the earlier pending delivery of its return it waits for
	LastStatus     *int    `json:"last_status"` // what the gateway answered for the last attempt; null before one
	LastError      string  `json:"last_error"`
}

// nextAttempt is the NEXT ATTEMPT cell: the time, or for an item held
// behind an earlier delivery of its return, that delivery's short id.
func (it queueListItem) nextAttempt() string {
	switch {
	case it.Status == ItemDead:
		return "-"
	case it.HeldBehind != nil && *it.HeldBehind != "":
		return "held behind " + shortID(*it.HeldBehind)
	case it.NextAttemptAt != nil:
		return orDash(terminalSafe(*it.NextAttemptAt))
	}
	return "-"
}

// lastStatus is the LAST STATUS cell: none before the first attempt
// (null, or 0 from an older gateway).
func (it queueListItem) lastStatus() string {
	if it.LastStatus == nil || *it.LastStatus <= 0 {
		return "-"
	}
	return strconv.Itoa(*it.LastStatus)
}

// deliveryIDShort matches the part of a delivery id the page shows too:
// the first 8 hex digits after its time (1796354632-8f80b9fb… is 8f80b9fb).
var deliveryIDShort = regexp.MustCompile(`^[0-9]+-([0-9a-fA-F]{8})`)

// shortID shortens a delivery id for a table cell; the ID column holds
// it in full.
func shortID(id string) string {
	if m := deliveryIDShort.FindStringSubmatch(id); m != nil {
		return m[1]
	}
	return terminalSafe(fitWidth(id, 20))
}

// runQueue lists the queue, or retries or drops one delivery. With JSON it
// prints the gateway's answer as it is, fields this command does not know
// included.
func runQueue(o queueOptions, stdout io.Writer) error {
	switch o.Action {
	case "", "list":
		var raw []json.RawMessage
		if _, err := adminJSON(o.adminOptions, http.MethodGet, "/reready/queue", &raw); err != nil {
			return err
		}
		if o.JSON {
			return writeIndentedJSON(stdout, raw)
		}
		items := make([]queueListItem, len(raw))
		for i, r := range raw {
			if err := json.Unmarshal(r, &items[i]); err != nil {
				return fmt.Errorf("the admin endpoint's queue item %d is not what reready expects: %v", i, err)
			}
		}
		if len(items) == 0 {
			_, err := fmt.Fprintln(stdout, "the queue is empty")
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSTATUS\tSTATE\tRETURN ID\tRECEIVED\tATTEMPTS\tNEXT ATTEMPT\tLAST STATUS\tLAST ERROR")
		for _, it := range items {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", terminalSafe(it.ID), terminalSafe(it.Status), orDash(terminalSafe(it.State)),
				orDash(terminalSafe(it.DeviceReturnID)), orDash(terminalSafe(it.ReceivedAt)), it.Attempts, it.nextAttempt(), it.lastStatus(),
				orDash(terminalSafe(verify.Clip(it.LastError, 80))))
		}
		return tw.Flush()
	case "retry", "drop":
		if o.ID == "" {
			return fmt.Errorf("queue %s needs the id of a queued delivery (see caddy reready queue list)", o.Action)
		}
		if !validItemName(o.ID) {
			return fmt.Errorf("invalid id %q: ids look like 1744831201-9f86d081884c7d659a2feaa0c55ad015", o.ID)
		}
		method, uri := http.MethodPost, "/reready/queue/"+o.ID+"/retry"
		if o.Action == "drop" {
			method, uri = http.MethodDelete, "/reready/queue/"+o.ID
		}
		var raw json.RawMessage
		if _, err := adminJSON(o.adminOptions, method, uri, &raw); err != nil {
			return err
		}
		if o.JSON {
			return writeIndentedJSON(stdout, raw)
		}
		var it queueListItem
		if err := json.Unmarshal(raw, &it); err != nil {
			return fmt.Errorf("the admin endpoint's answer to %s is not what reready expects: %v", uri, err)
		}
		if o.Action == "retry" {
			_, err := fmt.Fprintf(stdout, "%s is pending and due now, after any earlier delivery of its return (state %s, return %s, %d attempts so far)\n",
				terminalSafe(it.ID), terminalSafe(it.State), terminalSafe(it.DeviceReturnID), it.Attempts)
			return err
		}
		_, err := fmt.Fprintf(stdout, "dropped %s (%s, state %s, return %s, %d attempts)\n",
			terminalSafe(it.ID), terminalSafe(it.Status), terminalSafe(it.State), terminalSafe(it.DeviceReturnID), it.Attempts)
		return err
	}
	return fmt.Errorf("unknown queue action %q: want list, retry <id> or drop <id>", o.Action)
}

func writeIndentedJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// terminalSafe replaces control characters, so a payload value cannot
// move the cursor or rewrite the operator's terminal.
func terminalSafe(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r >= 0x80 && r < 0xa0 {
			return '?'
		}
		return r
	}, s)
}

// ---------------------------------------------------------------------
// Cobra wiring

// addAdminFlags adds --address, --config and --adapter, as Caddy's reload
// command has them.
func addAdminFlags(c *cobra.Command) {
	c.Flags().String("address", "", "The address of the admin endpoint (default: from --config, else localhost:2019)")
	c.Flags().StringP("config", "c", "", "Read the admin address from this config file")
	c.Flags().StringP("adapter", "a", "", "Name of the adapter of --config")
}

func adminFlags(fl caddycmd.Flags) adminOptions {
	return adminOptions{Address: fl.String("address"), Config: fl.String("config"), Adapter: fl.String("adapter")}
}

// opsCommands are the deliveries and queue subcommands.
func opsCommands() []*cobra.Command {
	deliveries := &cobra.Command{
		Use:   "deliveries [--return-id <id>] [--state <state>] [--outcome <outcome>] [--test | --no-test] [--limit <n>] [--since <when>] [--until <when>] [--json] [--follow] [--address <admin>]",
		Short: "Shows the delivery journal of a running gateway",
		Long: `
Prints the journal of a running gateway: every request its reready_verify
handlers saw and every redelivery attempt, oldest first, as a table of time,
outcome, status (what the sender got; for a redelivery, the app's answer),
state, return id, attempt, milliseconds and reason code. Outcomes:
forwarded, rejected, replayed, observed, queued, redelivered, dead. A test
event ("test": true in its payload, as caddy reready send --test sends)
reads "forwarded (test)"; --test shows only test events, --no-test hides
them. Longer values are cut short with "…" so the columns stay aligned.

The journal is kept in memory by each Caddy process (10,000 entries by
default; see the reready global option) and survives caddy reload.

--since and --until (an RFC 3339 time, or a duration back from now: 2h,
7d) list a range instead, from the history in Caddy's storage as well
when the reready history option is on (every gateway sharing the storage;
each entry once, with the node that recorded it): every entry of the
range, or the newest --limit.

--follow keeps printing new entries (polling every second) until Ctrl-C,
through reloads and restarts. --json prints the entries as JSON (a JSON
line per entry with --follow).

The admin endpoint is --address, or the one --config names, or
localhost:2019.
`,
		Args:                  cobra.NoArgs,
		DisableFlagsInUseLine: true,
		RunE: cobraRun(func(fl caddycmd.Flags, c *cobra.Command) error {
			ctx, stop := signal.NotifyContext(c.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			limit := fl.Int("limit")
			if !c.Flags().Changed("limit") && (fl.String("since") != "" || fl.String("until") != "") {
				limit = 0 // the whole range
			}
			return runDeliveries(ctx, deliveriesOptions{
				adminOptions: adminFlags(fl),
				ReturnID:     fl.String("return-id"),
				State:        fl.String("state"),
				Outcome:      fl.String("outcome"),
				Test:         fl.Bool("test"),
				NoTest:       fl.Bool("no-test"),
				Limit:        limit,
				JSON:         fl.Bool("json"),
				Follow:       fl.Bool("follow"),
				Since:        fl.String("since"),
				Until:        fl.String("until"),
			}, c.OutOrStdout(), c.ErrOrStderr())
		}),
	}
	deliveries.Flags().String("return-id", "", "Only this device_return_id")
	deliveries.Flags().String("state", "", "Only this state")
	deliveries.Flags().String("outcome", "", "Only this outcome: "+strings.Join(Outcomes, ", "))
	deliveries.Flags().Bool("test", false, "Only test events (\"test\": true)")
	deliveries.Flags().Bool("no-test", false, "No test events")
	deliveries.Flags().Int("limit", DefaultDeliveryLimit, "Show at most this many (the newest)")
	deliveries.Flags().Bool("json", false, "Print JSON")
	deliveries.Flags().BoolP("follow", "f", false, "Keep printing new entries")
	rangeFlags(deliveries)
	addAdminFlags(deliveries)

	queue := &cobra.Command{
		Use:   "queue [list | retry <id> | drop <id>] [--json] [--address <admin>]",
		Short: "Lists, retries and drops queued deliveries",
		Long: `
With the queue option on, deliveries the app failed are kept in Caddy's
storage and redelivered until the app takes them; after max_age they are
dead and wait for an operator.

  list        (the default) every queued delivery, pending and dead: id,
              status, state, return id, when it arrived, attempts, next
              attempt ("held behind <id>" while an earlier delivery of its
              return is pending: it goes after that one), the status the
              gateway answered for the last attempt ("-" before the first)
              and the last error
  retry <id>  attempt it now; a dead delivery goes back to pending
  drop <id>   delete it for good

Gateways sharing a storage share one queue: any of them lists and changes
it. The admin endpoint is --address, or the one --config names, or
localhost:2019.
`,
		Args:                  cobra.MaximumNArgs(2),
		DisableFlagsInUseLine: true,
		RunE: cobraRun(func(fl caddycmd.Flags, c *cobra.Command) error {
			o := queueOptions{adminOptions: adminFlags(fl), JSON: fl.Bool("json")}
			args := c.Flags().Args()
			if len(args) > 0 {
				o.Action = args[0]
			}
			if len(args) > 1 {
				o.ID = args[1]
			}
			if (o.Action == "" || o.Action == "list") && o.ID != "" {
				return fmt.Errorf("queue list takes no id; got %q", o.ID)
			}
			return runQueue(o, c.OutOrStdout())
		}),
	}
	queue.Flags().Bool("json", false, "Print JSON")
	addAdminFlags(queue)
	return []*cobra.Command{deliveries, queue, showCommand(), replayCommand()}
}

// lastSeq is the newest sequence number among ds (oldest first).
func lastSeq(ds []Delivery) uint64 {
	if len(ds) == 0 {
		return 0
	}
	return ds[len(ds)-1].Seq
}
