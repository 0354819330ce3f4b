package rereadyverify

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

// caddy reready deliveries --since pages through the cursor and prints
// the range oldest first, from the ring and the history; caddy reready
// show prints a delivery's entries, headers and body, and --body the body
// exactly.
func TestCommandHistory(t *testing.T) {
	dir := t.TempDir()
	a, _ := historyApp(t, &certmagic.FileStorage{Path: dir}, HistoryConfig{Bodies: true}, 3)
	addr, _, _ := fakeAdmin(t, a)
	o := adminOptions{Address: addr}
	saved := rangePage
	rangePage = 2
	t.Cleanup(func() { rangePage = saved })

	t0 := time.Now().Add(-time.Hour)
	id := deliveryID{t: t0.Unix(), h: [16]byte{7}}
	for i := range 7 {
		e := journalEntry{at: t0.Add(time.Duration(i) * time.Minute), outcome: OutcomeForwarded, returnID: rid(fmt.Sprint("ret-", i)), status: 200}
		if i == 2 {
			e.id, e.outcome = id, OutcomeQueued
		}
		a.record(e)
	}
	body := []byte(`{"device_return_id":"ret-2","state":"complete","test":false}`)
	a.history.keepBody(&historyBody{DeliveryID: id.String(), Body: body, Headers: map[string]string{"X-Reready-State": "complete"}, Host: "h.test", URI: "/hook"})
	a.history.flush(context.Background())

	var out, errOut bytes.Buffer
	if err := runDeliveries(context.Background(), deliveriesOptions{adminOptions: o, Since: "2h"}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 8 || !strings.Contains(lines[1], "ret-0") || !strings.Contains(lines[7], "ret-6") {
		t.Fatalf("deliveries --since 2h:\n%s", out.String())
	}
	out.Reset()
	if err := runDeliveries(context.Background(), deliveriesOptions{adminOptions: o, Since: "2h", Limit: 3, JSON: true}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	var ds []Delivery
	if err := json.Unmarshal(out.Bytes(), &ds); err != nil || len(ds) != 3 || ds[0].DeviceReturnID != "ret-4" || ds[0].Node != "node-a" {
		t.Fatalf("--limit 3 --json: %v %s", err, out.String())
	}
	if err := runDeliveries(context.Background(), deliveriesOptions{adminOptions: o, Since: "soon"}, &out, &errOut); err == nil || !strings.Contains(err.Error(), `invalid --since "soon"`) {
		t.Fatalf("--since soon: %v", err)
	}

	out.Reset()
	if err := runShow(showOptions{adminOptions: o, ID: id.String()}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"delivery " + id.String(), "queued", "recorded by node-a", "X-Reready-State: complete", "request: h.test/hook", "\"device_return_id\": \"ret-2\""} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("show lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if err := runShow(showOptions{adminOptions: o, ID: id.String(), Body: true}, &out, io.Discard); err != nil || !bytes.Equal(out.Bytes(), body) {
		t.Fatalf("show --body: %v %q", err, out.String())
	}
	err := runShow(showOptions{adminOptions: o, ID: "1-00000000000000000000000000000000"}, &out, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "(HTTP 404)") {
		t.Fatalf("show of an unknown id: %v", err)
	}
}
