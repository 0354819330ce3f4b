package rereadyverify

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

// This file is `caddy reready deliveries --since/--until` (a range of the
// journal and the history, paged through the admin API's cursor) and
// `caddy reready show <delivery_id>`.

// rangePage is the page size of a range listing (tests lower it).
var rangePage = 1000

// adminGet GETs uri, decodes its JSON answer into v and returns its
// headers.
func adminGet(o adminOptions, uri string, v any) (http.Header, error) {
	resp, err := adminRequest(o, http.MethodGet, uri)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("reading the admin endpoint's answer: %w", err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return nil, fmt.Errorf("the admin endpoint's answer to %s is not what reready expects (is the reready module in this Caddy, with history?): %v", uri, err)
	}
	return resp.Header, nil
}

// runDeliveriesRange prints the entries from Since to Until, oldest
// first, paging through the answers' cursors: all of them, or the newest
// Limit when Limit > 0.
func runDeliveriesRange(o deliveriesOptions, stdout, stderr io.Writer) error {
	if o.Follow {
		return errors.New("--follow shows new entries as they come; it takes no --since or --until")
	}
	if o.Outcome != "" && !slices.Contains(Outcomes, o.Outcome) {
		return fmt.Errorf("invalid --outcome %q: want one of %s", o.Outcome, strings.Join(Outcomes, ", "))
	}
	if o.Limit < 0 {
		return fmt.Errorf("invalid --limit %d", o.Limit)
	}
	q, err := url.ParseQuery(strings.TrimPrefix(o.query(0, false)[len("/reready/deliveries"):], "?"))
	if err != nil {
		return err
	}
	for flag, v := range map[string]string{"since": o.Since, "until": o.Until} {
		if v == "" {
			continue
		}
		if _, err := parseWhen(v, time.Now()); err != nil {
			return fmt.Errorf("invalid --%s %q: want an RFC 3339 time (2026-01-02T15:04:05Z) or a duration back from now (2h, 7d)", flag, v)
		}
		q.Set(flag, v)
	}
	var all []Delivery
	unread := 0
	for {
		size := rangePage
		if o.Limit > 0 {
			size = min(size, o.Limit-len(all))
		}
		q.Set("limit", strconv.Itoa(size))
		var page []Delivery
		hdr, err := adminGet(o.adminOptions, "/reready/deliveries?"+q.Encode(), &page)
		if err != nil {
			return err
		}
		all = append(all, o.keepTest(page)...)
		if n, _ := strconv.Atoi(hdr.Get(partialHeader)); n > 0 {
			unread += n
		}
		next := hdr.Get(nextCursorHeader)
		if next == "" || len(page) == 0 || o.Limit > 0 && len(all) >= o.Limit {
			break
		}
		q.Set("cursor", next)
	}
	slices.Reverse(all)
	warnPartial(stderr, unread)
	if o.JSON {
		return writeIndentedJSON(stdout, all)
	}
	if len(all) == 0 {
		fmt.Fprintln(stderr, "no deliveries in that range")
		return nil
	}
	newDeliveryTable(stdout, false).rows(all)
	return nil
}

// showOptions are the flags and argument of `caddy reready show`.
type showOptions struct {
	adminOptions
	ID   string
	JSON bool
	Body bool // only the body, exactly
}

// runShow prints a delivery's entries and, when kept, its headers and
// body (pretty-printed when it is JSON); with Body, only the body's bytes.
func runShow(o showOptions, stdout, stderr io.Writer) error {
	if _, ok := parseDeliveryID(o.ID); !ok {
		return fmt.Errorf("invalid delivery id %q: want <t>-<32 hex digits>, as caddy reready deliveries --json shows", o.ID)
	}
	var rec DeliveryRecord
	hdr, err := adminGet(o.adminOptions, "/reready/deliveries/"+url.PathEscape(o.ID), &rec)
	if err != nil {
		return err
	}
	if n, _ := strconv.Atoi(hdr.Get(partialHeader)); n > 0 {
		warnPartial(stderr, n)
	}
	if o.Body {
		if rec.Body == nil {
			return fmt.Errorf("no body kept for %s (the reready history option keeps bodies with `bodies`)", o.ID)
		}
		_, err := stdout.Write(rec.Body)
		return err
	}
	if o.JSON {
		return writeIndentedJSON(stdout, rec)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "delivery %s\n\n", rec.DeliveryID)
	io.WriteString(&b, tableOf(rec.Entries))
	nodes := map[string]bool{}
	for _, d := range rec.Entries {
		nodes[d.Node] = true
	}
	if len(nodes) > 1 || len(nodes) == 1 && !nodes[""] {
		names := make([]string, 0, len(nodes))
		for n := range nodes {
			names = append(names, terminalSafe(n))
		}
		sort.Strings(names)
		fmt.Fprintf(&b, "\nrecorded by %s\n", strings.Join(names, ", "))
	}
	if rec.Body == nil {
		b.WriteString("\nno body kept (the reready history option keeps bodies with `bodies`)\n")
		_, err := io.WriteString(stdout, b.String())
		return err
	}
	if rec.Host != "" || rec.URI != "" {
		fmt.Fprintf(&b, "\nrequest: %s%s\n", terminalSafe(rec.Host), terminalSafe(rec.URI))
	}
	b.WriteString("\nheaders:\n")
	keys := make([]string, 0, len(rec.Headers))
	for k := range rec.Headers {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "  %s: %s\n", terminalSafe(k), terminalSafe(rec.Headers[k]))
	}
	fmt.Fprintf(&b, "\nbody (%d bytes):\n", len(rec.Body))
	var pretty bytes.Buffer
	if json.Indent(&pretty, rec.Body, "", "  ") == nil {
		b.WriteString(terminalSafe(pretty.String()))
	} else {
		b.WriteString(terminalSafe(string(rec.Body)))
	}
	b.WriteString("\n")
	_, err = io.WriteString(stdout, b.String())
	return err
}

// tableOf is the deliveries table of ds.
func tableOf(ds []Delivery) string {
	var b strings.Builder
	newDeliveryTable(&b, false).rows(ds)
	return b.String()
}

// rangeFlags adds --since and --until to `caddy reready deliveries`.
func rangeFlags(c *cobra.Command) {
	c.Flags().String("since", "", "Entries from then on, from the history too: an RFC 3339 time or a duration back from now (2h, 7d)")
	c.Flags().String("until", "", "Entries up to then (same forms as --since)")
}

// showCommand is `caddy reready show`.
func showCommand() *cobra.Command {
	show := &cobra.Command{
		Use:   "show <delivery_id> [--json] [--body] [--address <admin>]",
		Short: "Shows one delivery: every journal entry and, when kept, its body and headers",
		Long: `
Prints everything a running gateway knows of one delivery: its journal
entries (live, queued, retrying, redelivered, dead, replayed), oldest
first, from its memory and, with the reready history option, from the
history in Caddy's storage (every gateway sharing the storage). With
history bodies, it also prints the trusted X-ReReady-* headers the app got
and the body, pretty-printed when it is JSON; --body prints only the body,
exactly as received.

The admin endpoint is --address, or the one --config names, or
localhost:2019.
`,
		Args:                  cobra.ExactArgs(1),
		DisableFlagsInUseLine: true,
		RunE: cobraRun(func(fl caddycmd.Flags, c *cobra.Command) error {
			return runShow(showOptions{adminOptions: adminFlags(fl), ID: c.Flags().Arg(0), JSON: fl.Bool("json"), Body: fl.Bool("body")}, c.OutOrStdout(), c.ErrOrStderr())
		}),
	}
	show.Flags().Bool("json", false, "Print JSON")
	show.Flags().Bool("body", false, "Print only the body, byte for byte")
	addAdminFlags(show)
	return show
}

// warnPartial says on stderr that n history objects were listed but not
// read, so the answer may lack entries (the admin API's partialHeader).
func warnPartial(stderr io.Writer, n int) {
	if n > 0 {
		fmt.Fprintf(stderr, "warning: %s of the history listed but not readable (swept meanwhile, or not written yet): entries may be missing; ask again\n", plural(n, "object", "objects"))
	}
}
