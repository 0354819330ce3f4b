//go:build fullsuite

package realbin

import (
	"bytes"
	"context"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest/harness"
)

// runReready runs `caddy reready args...` with stdin and returns its
// output and error.
func runReready(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, caddyBin, append([]string{"reready"}, args...)...)
	cmd.Env = harness.CaddyEnv(t.TempDir())
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// After the app took deliveries and mishandled them (it answered 200),
// an operator replays a range with the CLI: the app receives them again,
// each once more, in order per return, byte for byte, with the same
// delivery id and X-ReReady-Replay; a dry run only counts; the range's
// filters select; without kept bodies, replay is refused with 409.
func TestReplayRangeAfterAppBug(t *testing.T) {
	const secret = "ssk_replay_range_3c4d5e"
	dir := t.TempDir()
	app := harness.NewUpstream(t)
	app.Up(t)
	site := queueSite(secret, "", app.Addr)
	g := startGatewayBinOn(t, caddyBin, 0, historyGlobal(dir), site, nil, secret)
	retA, retB := harness.UUID(), harness.UUID()
	var sent []signed
	for i, ev := range []harness.Event{
		{ID: retA, State: "pending_return_shipment"}, {ID: retB, State: "pending_return_shipment"},
		{ID: retA, State: "pending_return_shipment_delivery"}, {ID: retA, State: "complete"}, {ID: retB, State: "complete"},
	} {
		d := signEvent(t, harness.Signers[i%len(harness.Signers)], secret, ev)
		if r := d.post(t, g, "/hooks/app?src=rr"); r.status != 200 {
			t.Fatalf("live %d: %d %q", i, r.status, r.body)
		}
		sent = append(sent, d)
	}
	admin := adminAddr(t, g)
	// Bodies reach the history within a flush (2 s).
	harness.WaitUntil(t, "the bodies did not reach the history", 4*logTimeout, func() bool {
		out, err := runReready(t, "", "replay", "--address", admin, "--since", "1h", "--dry-run")
		return err == nil && strings.Contains(out, "5 deliveries selected")
	})
	out, err := runReready(t, "", "replay", "--address", admin, "--since", "1h", "--state", "complete", "--dry-run")
	if err != nil || !strings.Contains(out, "2 deliveries selected") || !strings.Contains(out, sent[3].id) || !strings.Contains(out, sent[4].id) {
		t.Fatalf("dry run of state complete: %v\n%s", err, out)
	}
	if n := len(app.Records()); n != 5 {
		t.Fatalf("a dry run reached the app: %d requests, want 5", n)
	}
	out, err = runReready(t, "n\n", "replay", "--address", admin, "--since", "1h", "--return-id", retA)
	if err == nil || !strings.Contains(out, "Replay 3 deliveries?") || len(app.Records()) != 5 {
		t.Fatalf("declined: %v\n%s", err, out)
	}
	out, err = runReready(t, "", "replay", "--address", admin, "--since", "1h", "--return-id", retA, "--yes")
	m := regexp.MustCompile(`replayed 3 deliveries \(replay ([0-9a-f]{16})\)`).FindStringSubmatch(out)
	if err != nil || m == nil {
		t.Fatalf("replay: %v\n%s", err, out)
	}
	replayID := m[1]

	want := []signed{sent[0], sent[2], sent[3]}
	harness.WaitUntil(t, "the replayed deliveries did not all arrive", queueTimeout, func() bool {
		return len(app.Records()) >= 5+len(want)
	})
	g.WaitScans(t, 2, queueTimeout) // and nothing more after them
	got := app.Records()[5:]
	if len(got) != len(want) {
		t.Fatalf("the app got %d replayed requests, want %d", len(got), len(want))
	}
	for i, r := range got {
		w := want[i]
		if r.ID() != w.id || !bytes.Equal(r.Body, w.body) || r.Header.Get("X-Reready-Replay") != replayID ||
			r.Header.Get("X-Reready-State") != w.ev.State || r.URI != "/hooks/app?src=rr" {
			t.Errorf("replayed %d: %s %q %v %s; want %s (%s) with X-ReReady-Replay %s", i, r.ID(), r.Body, r.Header, r.URI, w.id, w.ev.State, replayID)
		}
		if r.Header.Get("X-Reready-Signature-512") != "" {
			t.Errorf("replayed %d carries a signature header; none is kept", i)
		}
	}
	if n := len(queueList(t, g)); n != 0 {
		t.Errorf("%d items left in the queue", n)
	}
	replayed := 0
	for _, e := range journalQuery(t, g, "outcome=queued&limit=10000") {
		if e.str("reason") == "replay_requested" {
			replayed++
		}
	}
	if replayed != 3 {
		t.Errorf("%d journal entries with reason replay_requested, want 3", replayed)
	}

	// Without bodies kept, replay says why.
	g2 := startGatewayBinOn(t, caddyBin, 0, storageGlobal(t.TempDir())+"\n\treready {\n\t\thistory\n\t}", site, nil, secret)
	out, err = runReready(t, "", "replay", "--address", adminAddr(t, g2), "--since", "1h", "--yes")
	if err == nil || !strings.Contains(out, "history { bodies }") || !strings.Contains(out, "409") {
		t.Fatalf("without bodies: %v\n%s", err, out)
	}
}

// The fleet on Redis: two gateways on one Redis storage share one history
// (each entry once, on either gateway), and a replay asked of gateway 2
// sends again what gateway 1 recorded, bodies read from Redis, in order.
func TestHistoryAndReplayFleetOnRedis(t *testing.T) {
	const secret = "ssk_history_redis_fleet_6f7a8b"
	st := newBackend(t, "redis")
	app := harness.NewUpstream(t)
	app.Up(t)
	global := st.global + "\n\treready {\n\t\thistory {\n\t\t\tkeep 2d\n\t\t\tbodies\n\t\t}\n\t}"
	site := queueSite(secret, "", app.Addr)
	g1 := startGatewayBinOn(t, st.bin, 0, global, site, nil, secret)
	g2 := startGatewayBinOn(t, st.bin, 0, global, site, nil, secret)
	retA, retB := harness.UUID(), harness.UUID()
	var viaG1 []signed
	for i, c := range []struct {
		g  *gateway
		ev harness.Event
	}{
		{g1, harness.Event{ID: retA, State: "pending_return_shipment"}},
		{g2, harness.Event{ID: retB, State: "pending_return_shipment"}},
		{g1, harness.Event{ID: retA, State: "pending_return_shipment_delivery"}},
		{g1, harness.Event{ID: retA, State: "complete"}},
		{g2, harness.Event{ID: retB, State: "complete"}},
	} {
		d := signEvent(t, harness.Signers[i%len(harness.Signers)], secret, c.ev)
		if r := d.post(t, c.g, "/hooks/app"); r.status != 200 {
			t.Fatalf("live %d: %d %q", i, r.status, r.body)
		}
		if c.g == g1 {
			viaG1 = append(viaG1, d)
		}
	}
	for _, g := range []*gateway{g1, g2} {
		harness.WaitUntil(t, "the fleet's history did not show all 5 deliveries", 4*logTimeout, func() bool {
			seen := map[string]int{}
			for _, e := range historyRange(t, g) {
				seen[e.str("delivery_id")]++
			}
			n := 0
			for _, c := range seen {
				if c != 1 {
					return false
				}
				n++
			}
			return n == 5
		})
	}
	admin2 := adminAddr(t, g2)
	harness.WaitUntil(t, "the bodies did not reach Redis", 4*logTimeout, func() bool {
		out, err := runReready(t, "", "replay", "--address", admin2, "--since", "1h", "--return-id", retA, "--dry-run")
		return err == nil && strings.Contains(out, "3 deliveries selected")
	})
	out, err := runReready(t, "", "replay", "--address", admin2, "--since", "1h", "--return-id", retA, "--yes")
	m := regexp.MustCompile(`replayed 3 deliveries \(replay ([0-9a-f]{16})\)`).FindStringSubmatch(out)
	if err != nil || m == nil {
		t.Fatalf("replay through gateway 2: %v\n%s", err, out)
	}
	harness.WaitUntil(t, "the replayed deliveries did not all arrive", queueTimeout, func() bool { return len(app.Records()) >= 8 })
	g1.WaitScans(t, 2, queueTimeout)
	g2.WaitScans(t, 2, queueTimeout)
	got := app.Records()[5:]
	if len(got) != 3 {
		t.Fatalf("the app got %d replayed requests, want 3 (each once, by either gateway)", len(got))
	}
	for i, r := range got {
		if r.ID() != viaG1[i].id || !bytes.Equal(r.Body, viaG1[i].body) || r.Header.Get("X-Reready-Replay") != m[1] {
			t.Errorf("replayed %d: %s %q (replay %q); want %s in order, replay %s", i, r.ID(), r.Body, r.Header.Get("X-Reready-Replay"), viaG1[i].id, m[1])
		}
	}
}
