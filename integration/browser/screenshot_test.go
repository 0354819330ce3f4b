package browser

import (
	"bytes"
	"flag"
	"image/png"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest/harness"
)

var screenshotOut = flag.String("screenshot", "", "also write the page's screenshot to this file (make screenshot)")

// TestScreenshot fills a gateway with sample deliveries of every outcome,
// opens a return's timeline and takes a picture of the whole page: the one
// in the README, when run by `make screenshot`. It checks the picture is a
// PNG of the page's width.
func TestScreenshot(t *testing.T) {
	const secret = "ssk_browser_sample_7a6b5c4d"
	a := harness.StartUpstream(t)
	g := startGatewayMaxAge(t, a, secret, "1h")
	ctx := newBrowser(t, 1280, 900)
	open(t, ctx, g.Base+"/ops/")

	send := func(s harness.Signer, ev harness.Event, want int) string {
		t.Helper()
		status, id := g.send(t, s, secret, ev)
		if status != want {
			t.Fatalf("%s for %s: status %d, want %d", ev.State, ev.ID, status, want)
		}
		return id
	}
	r1, r2, r3, r4, r5 := harness.UUID(), harness.UUID(), harness.UUID(), harness.UUID(), harness.UUID()

	// A return on its way, a test event, a forgery and a resend.
	send(harness.Python, harness.Event{ID: r1, State: "pending_outbound_shipment"}, http.StatusOK)
	send(harness.Ruby, harness.Event{ID: r1, State: "pending_outbound_shipment_delivery"}, http.StatusOK)
	body := harness.Event{ID: r1, State: "pending_return_shipment"}.Body()
	sig := harness.OpenSSL.Sign(t, secret, time.Now().Unix(), body)
	if status, _ := g.post(t, body, sig); status != http.StatusOK {
		t.Fatalf("status %d", status)
	}
	send(harness.Ruby, harness.Event{ID: r2, State: "complete", Test: true}, http.StatusOK)
	if status, _ := g.send(t, harness.OpenSSL, "ssk_someone_else", harness.Event{ID: harness.UUID(), State: "complete"}); status != http.StatusUnauthorized {
		t.Fatalf("forgery: status %d, want 401", status)
	}
	g.post(t, body, sig)

	// The app fails (503): queued; it recovers and a live delivery brings
	// the queued one through at once.
	a.Answer(http.StatusServiceUnavailable)
	send(harness.Python, harness.Event{ID: r3, State: "not_returned"}, http.StatusAccepted)
	a.Answer(0)
	send(harness.Ruby, harness.Event{ID: r4, State: "pending_outbound_shipment"}, http.StatusOK)
	waitJS(t, ctx, "the redelivery", rowWhere("#deliveries", map[string]string{"outcome": "redelivered", "Return id": r3}))

	// One the app refuses on redelivery (410): dead.
	a.Answer(http.StatusServiceUnavailable)
	send(harness.Python, harness.Event{ID: r5, State: "failed"}, http.StatusAccepted)
	a.Answer(http.StatusGone)
	waitJSFor(t, ctx, "the dead item", rowWhere("#queue", map[string]string{"Return id": r5, "status": "dead"}), waitTimeout*2)

	// The app fails again: r1's next states wait in the queue, in order.
	a.Answer(http.StatusServiceUnavailable)
	send(harness.OpenSSL, harness.Event{ID: r1, State: "pending_return_shipment_delivery"}, http.StatusAccepted)
	send(harness.Python, harness.Event{ID: r1, State: "complete"}, http.StatusAccepted)
	waitJS(t, ctx, "r1's held delivery", rowWhere("#deliveries", map[string]string{"Return id": r1, "Outcome": "queuedheld"}))
	waitJS(t, ctx, "the queue", `document.querySelectorAll('#queue tbody tr:not(.empty)').length === 3`)

	click(t, ctx, `Array.from(document.querySelectorAll('#deliveries button.link')).find((b) => b.textContent === `+jsString(r1)+`)`)
	waitJS(t, ctx, "r1's timeline", `!document.getElementById('timeline').hidden && document.querySelectorAll('#timeline-table tbody tr').length >= 6`)
	evalJS(t, ctx, `window.scrollTo(0, 0); document.activeElement.blur(); true`, nil)
	// No highlight of new rows in the picture.
	if _, err := chromedp.Call(ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
		Features: []*emulation.MediaFeature{{Name: "prefers-reduced-motion", Value: "reduce"}},
	}); err != nil {
		t.Fatal(err)
	}
	noViolations(t, ctx)

	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(shot))
	if err != nil {
		t.Fatalf("the screenshot is no PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() != 1280 || b.Dy() < 900 {
		t.Errorf("screenshot %dx%d, want 1280 wide and the whole page", b.Dx(), b.Dy())
	}
	out := *screenshotOut
	if out == "" {
		out = filepath.Join(t.TempDir(), "page.png")
	}
	if err := os.WriteFile(out, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", out, len(shot))
}
