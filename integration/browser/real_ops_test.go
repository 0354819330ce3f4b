package browser

import (
	"bytes"
	"encoding/json"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest/harness"
)

// The history views of issue 16 against the real gateway: no stubbed
// JSON. A gateway with history { bodies } and queue serves the page at
// /ops/; the page opens a delivery's detail, replays it, replays a range
// and pauses and resumes delivery, and the fake app sees what it should.

// historyBodies is the global option that keeps the history with bodies.
const historyBodies = "\treready {\n\t\thistory {\n\t\t\tkeep 2d\n\t\t\tbodies\n\t\t}\n\t}"

// appTimeout bounds a wait for the app to receive something the worker
// sends (a replay, a resumed delivery) on a shared 2-core machine.
const appTimeout = 20 * time.Second

// adminGet decodes the admin API's JSON answer to GET path into out and
// returns the status.
func (g *gateway) adminGet(t *testing.T, path string, out any) int {
	t.Helper()
	resp, err := (&http.Client{Timeout: replyTimeout}).Get("http://" + g.Admin + path)
	if err != nil {
		t.Fatalf("admin API %s: %v", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatalf("admin API %s: %v", path, err)
		}
	}
	return resp.StatusCode
}

// keptDetail is the part of GET /reready/deliveries/<id> this test reads.
type keptDetail struct {
	Body    []byte            `json:"body"`
	Headers map[string]string `json:"headers"`
}

// waitKept waits until the history holds id's body (it is written at the
// next flush, every 2 s) and returns the detail.
func (g *gateway) waitKept(t *testing.T, id string) keptDetail {
	t.Helper()
	deadline := time.Now().Add(appTimeout)
	for {
		var d keptDetail
		if g.adminGet(t, "/reready/deliveries/"+id, &d) == http.StatusOK && len(d.Body) > 0 {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("the history did not keep the body of %s within %s", id, appTimeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// replayed waits until the app has answered 2xx to a replay of id (a
// request with X-ReReady-Replay) other than those in not, and returns it.
func replayed(t *testing.T, a *harness.Upstream, id string, not ...string) harness.Request {
	t.Helper()
	deadline := time.Now().Add(appTimeout)
	for {
		for _, r := range a.ForID(id) {
			rid := r.Header.Get("X-Reready-Replay")
			if rid != "" && r.Status >= 200 && r.Status < 300 && !contains(not, rid) {
				return r
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no replay of %s reached the app within %s (it got %d request(s) with that id)", id, appTimeout, len(a.ForID(id)))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

var replayID = regexp.MustCompile(`^[0-9a-f]{16,}$`)

// The page drives the real gateway: a delivery's detail (entries, the body
// as sent, indented, its trusted headers), Replay of it (the app gets it
// again with its delivery id and X-ReReady-Replay), Replay of a return's
// range (the confirmation's count is the return's deliveries; the app gets
// them again in their order) and Pause (a delivery is held, past two queue
// scans) and Resume (it arrives).
func TestPageRealOps(t *testing.T) {
	const secret = "ssk_browser_real_ops_6b5a4f3e"
	a := harness.StartUpstream(t)
	g := startGatewayGlobal(t, a, secret, "1h", historyBodies)
	host := strings.TrimPrefix(g.Base, "http://")

	// Three deliveries of two returns: A, B, A. The app answers 200.
	retA, retB := harness.UUID(), harness.UUID()
	evs := []harness.Event{{ID: retA, State: "pending_return_shipment"}, {ID: retB, State: "complete"}, {ID: retA, State: "complete"}}
	ids := make([]string, len(evs))
	for i, ev := range evs {
		if status, _ := g.send(t, harness.Python, secret, ev); status != http.StatusOK {
			t.Fatalf("delivery %d: status %d, want 200", i, status)
		}
		// Forwarded live, it was answered as the app answered: its id is
		// the one the app got.
		for _, r := range a.Records() {
			if bytes.Equal(r.Body, ev.Body()) {
				ids[i] = r.ID()
			}
		}
		if ids[i] == "" || a.Delivered(ids[i]) != 1 {
			t.Fatalf("delivery %d: the app got it as %q, answered 2xx %d times; want once, with an id", i, ids[i], a.Delivered(ids[i]))
		}
	}
	for i, id := range ids {
		if d := g.waitKept(t, id); !bytes.Equal(d.Body, evs[i].Body()) {
			t.Fatalf("the history keeps %q for %s, want the body sent, %q", d.Body, id, evs[i].Body())
		}
	}

	// 1. B's detail, opened from its row.
	ctx := newBrowser(t, 1280, 1000)
	open(t, ctx, g.Base+"/ops/")
	detailBtn := `Array.from(document.querySelectorAll('#deliveries button.link')).find((b) => b.getAttribute('aria-label') === 'Details of delivery ' + ` + jsString(ids[1]) + `)`
	waitJS(t, ctx, "B's row with its detail button", detailBtn+` !== undefined && `+rowWhere("#deliveries", map[string]string{"Return id": retB, "outcome": "forwarded"}))
	click(t, ctx, detailBtn)
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, evs[1].Body(), "", "  "); err != nil {
		t.Fatal(err)
	}
	waitJS(t, ctx, "B's detail: its entry, body and headers", `!document.getElementById('detail').hidden && document.getElementById('detail-id').textContent === `+jsString(ids[1])+` &&
		`+rowWhere("#detail-entries", map[string]string{"Outcome": "forwarded", "Status": "200", "State": "complete", "Return id": retB})+` &&
		document.getElementById('detail-body').textContent === `+jsString(pretty.String())+` &&
		document.getElementById('detail-where').textContent === `+jsString("Received at "+host+"/hook")+` &&
		`+rowWhere("#detail-headers", map[string]string{"Name": "X-Reready-State", "Value": "complete"})+` &&
		`+rowWhere("#detail-headers", map[string]string{"Name": "X-Reready-Delivery-Id", "Value": ids[1]}))
	var headers []row
	evalJS(t, ctx, rowsJS+`('#detail-headers')`, &headers)
	for _, h := range headers {
		if strings.Contains(strings.ToLower(h["Name"]), "signature") {
			t.Errorf("the detail shows the header %s: %s", h["Name"], h["Value"])
		}
	}

	// 2. Replay… from the detail: one delivery, confirmed.
	before := len(a.ForID(ids[1]))
	click(t, ctx, `document.getElementById('detail-replay')`)
	waitJS(t, ctx, "the confirmation of one", `document.getElementById('confirm-dialog').open && document.getElementById('confirm-h').textContent === 'Replay 1 delivery?' &&
		document.getElementById('confirm-desc').textContent.includes(`+jsString(ids[1])+`)`)
	click(t, ctx, `document.getElementById('confirm-ok')`)
	waitJS(t, ctx, "the replay's result", `document.getElementById('detail-msg').textContent === 'Replay asked for 1 delivery: sent again to the app, in order per return.'`)
	again := replayed(t, a, ids[1])
	first := again.Header.Get("X-Reready-Replay")
	if !replayID.MatchString(first) || !bytes.Equal(again.Body, evs[1].Body()) || len(a.ForID(ids[1])) != before+1 {
		t.Errorf("the replay of %s: X-ReReady-Replay %q, body %q, %d requests with its id (%d before); want a replay id, the body sent, one more",
			ids[1], first, again.Body, len(a.ForID(ids[1])), before)
	}
	// The page shows it: a redelivery in the live table and, in the
	// detail read again, the replay's entries after the first.
	waitJS(t, ctx, "the redelivery in the live table", rowWhere("#deliveries", map[string]string{"Return id": retB, "outcome": "redelivered"}))
	reload(t, ctx)
	waitJS(t, ctx, "the detail with the replay's entries", `(() => { const r = `+rowsJS+`('#detail-entries');
		return !document.getElementById('detail').hidden && r.map((e) => e.outcome + ' ' + e.Status).join('|') === 'forwarded 200|queued 202|redelivered 200' &&
			r[1].Outcome === 'queuedreplay_requested'; })()`)
	click(t, ctx, `document.getElementById('detail-close')`)
	waitJS(t, ctx, "the detail closed", `document.getElementById('detail').hidden && location.search === ''`)

	// 3. Replay these…: A's deliveries since an hour ago.
	do(t, ctx, chromedp.SetValue(chromedp.ID("f-return"), retA), chromedp.SetValue(chromedp.ID("f-since"), "1h"),
		chromedp.Click(chromedp.CSS(`#filters button[type=submit]`)))
	waitJS(t, ctx, "A's range", `(() => { const r = `+rowsJS+`('#deliveries');
		return !document.getElementById('range-note').hidden && !document.getElementById('replay-range').hidden &&
			r.length === 2 && r.every((x) => x['Return id'] === `+jsString(retA)+` && x.outcome === 'forwarded'); })()`)
	click(t, ctx, `document.getElementById('replay-range')`)
	waitJS(t, ctx, "the confirmation of A's two", `document.getElementById('confirm-dialog').open && document.getElementById('confirm-h').textContent === 'Replay 2 deliveries?'`)
	click(t, ctx, `document.getElementById('confirm-ok')`)
	waitJS(t, ctx, "the range replay's result", `document.getElementById('range-msg').textContent === 'Replay asked for 2 deliveries: sent again to the app, in order per return.'`)
	r0, r2 := replayed(t, a, ids[0], first), replayed(t, a, ids[2], first)
	rid := r0.Header.Get("X-Reready-Replay")
	if !replayID.MatchString(rid) || r2.Header.Get("X-Reready-Replay") != rid {
		t.Errorf("the range's replay ids: %q and %q; want one, not the first replay's %q", rid, r2.Header.Get("X-Reready-Replay"), first)
	}
	if r2.At.Before(r0.Answered) {
		t.Errorf("A's second delivery reached the app at %s, before it answered the first (%s): want their order", r2.At.Format(time.RFC3339Nano), r0.Answered.Format(time.RFC3339Nano))
	}
	if !bytes.Equal(r0.Body, evs[0].Body()) || !bytes.Equal(r2.Body, evs[2].Body()) {
		t.Errorf("the range's replays carried %q and %q; want the bodies sent", r0.Body, r2.Body)
	}
	if n := len(a.ForID(ids[1])); n != before+1 {
		t.Errorf("B got %d requests with its id after A's range replay; want %d", n, before+1)
	}

	// 4. Pause delivery… (confirmed): a delivery is held; Resume sends it.
	do(t, ctx, chromedp.Click(chromedp.ID("f-clear")))
	waitJS(t, ctx, "live again, delivery running", `location.search === '' && document.getElementById('range-note').hidden &&
		document.getElementById('pause-state').textContent === 'Delivery to the app is running.'`)
	click(t, ctx, `document.getElementById('pause-toggle')`)
	waitJS(t, ctx, "the pause's confirmation", `document.getElementById('confirm-dialog').open && document.getElementById('confirm-h').textContent === 'Pause delivery to the app?'`)
	click(t, ctx, `document.getElementById('confirm-ok')`)
	waitJS(t, ctx, "the banner", `document.getElementById('pause').classList.contains('paused') && document.getElementById('pause-toggle').textContent === 'Resume delivery' &&
		/^Delivery paused since .+ by 127\.0\.0\.1:[0-9]+\.$/.test(document.getElementById('pause-state').textContent)`)
	var state struct {
		Paused []pauseEntry `json:"paused"`
	}
	if g.adminGet(t, "/reready/pause", &state) != http.StatusOK || len(state.Paused) != 1 || state.Paused[0].Path != "*" {
		t.Fatalf("GET /reready/pause: %+v; want every path paused", state)
	}
	var banner struct{ Text, Since string }
	evalJS(t, ctx, `({Text: document.getElementById('pause-state').textContent, Since: document.querySelector('#pause-state time').getAttribute('datetime')})`, &banner)
	if !strings.HasSuffix(banner.Text, " by "+state.Paused[0].By+".") || !sameTime(banner.Since, state.Paused[0].Since) {
		t.Errorf("the banner %q (since %s); the gateway says since %s by %s", banner.Text, banner.Since, state.Paused[0].Since, state.Paused[0].By)
	}

	held := harness.Event{ID: retB, State: "not_returned"}
	status, hid := g.send(t, harness.Ruby, secret, held)
	if status != http.StatusAccepted || hid == "" {
		t.Fatalf("a delivery while paused: status %d, id %q; want 202 and an id", status, hid)
	}
	waitJS(t, ctx, "the held delivery, queued (paused) and pending", rowWhere("#deliveries", map[string]string{"Return id": retB, "State": "not_returned", "Outcome": "queuedpaused"})+` &&
		`+rowWhere("#queue", map[string]string{"Delivery id": hid, "status": "pending"}))
	g.WaitScans(t, 2, appTimeout)
	if a.Received(hid) {
		t.Fatalf("the app got %s while delivery was paused", hid)
	}
	click(t, ctx, `document.getElementById('pause-toggle')`)
	waitJS(t, ctx, "delivery running again", `!document.getElementById('pause').classList.contains('paused') &&
		document.getElementById('pause-state').textContent === 'Delivery to the app is running.' && document.getElementById('pause-toggle').textContent === 'Pause delivery…'`)
	got := a.WaitDelivered(t, hid, appTimeout)
	if !bytes.Equal(got.Body, held.Body()) || got.Header.Get("X-Reready-Replay") != "" {
		t.Errorf("the resumed delivery: body %q, X-ReReady-Replay %q; want the body sent, no replay", got.Body, got.Header.Get("X-Reready-Replay"))
	}
	waitJS(t, ctx, "its redelivery on the page, the queue empty", rowWhere("#deliveries", map[string]string{"Return id": retB, "State": "not_returned", "outcome": "redelivered"})+` &&
		document.querySelector('#queue tbody tr.empty') !== null`)
	noViolations(t, ctx)
}

// sameTime reports whether two RFC 3339 times are the same instant.
func sameTime(a, b string) bool {
	ta, err1 := time.Parse(time.RFC3339Nano, a)
	tb, err2 := time.Parse(time.RFC3339Nano, b)
	return err1 == nil && err2 == nil && ta.Equal(tb)
}
