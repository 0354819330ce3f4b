//go:build fullsuite

package realbin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest/harness"
)

// The history option: the journal kept in Caddy's storage, across
// restarts and shared by the gateways of one storage.

// historyGlobal is the storage in dir and the reready app with history
// (and bodies).
func historyGlobal(dir string) string {
	return storageGlobal(dir) + "\n\treready {\n\t\thistory {\n\t\t\tkeep 2d\n\t\t\tbodies\n\t\t}\n\t}"
}

// historySite verifies /hooks/* and passes it to upstream.
func historySite(secret, upstream string) string {
	return fmt.Sprintf("\n\treready_verify /hooks/* {\n\t\tsecret %s\n\t}\n\treverse_proxy /hooks/* %s", secret, upstream)
}

// historyRange is GET /reready/deliveries?since=1h&limit=10000 of g.
func historyRange(t *testing.T, g *gateway) []obj {
	t.Helper()
	return adminList(t, g, "/reready/deliveries?since=1h&limit=10000")
}

// entriesOf keeps the entries of delivery id.
func entriesOf(es []obj, id string) []obj {
	var out []obj
	for _, e := range es {
		if e.str("delivery_id") == id {
			out = append(out, e)
		}
	}
	return out
}

// A gateway restarted on the same storage still shows what its previous
// process recorded, body included, through the admin API and through
// caddy reready show (the body byte for byte with --body) and deliveries
// --since.
func TestHistoryRestart(t *testing.T) {
	const secret = "ssk_history_restart_5a6b7c"
	dir := t.TempDir()
	app := harness.NewUpstream(t)
	app.Up(t)
	site := historySite(secret, app.Addr)
	g1 := startGatewayBinOn(t, caddyBin, 0, historyGlobal(dir), site, nil, secret)
	d := signEvent(t, harness.Ruby, secret, harness.NewEvent("complete"))
	if r := d.post(t, g1, "/hooks/app?x=1"); r.status != http.StatusOK {
		t.Fatalf("delivery: %d %q", r.status, r.body)
	}
	// Written within a flush interval (2s); then the process goes.
	harness.WaitUntil(t, "the entry did not reach the history", 3*logTimeout, func() bool {
		return len(entriesOf(historyRange(t, g1), d.id)) == 1 && bytes.Contains(readTree(t, dir), []byte(d.id))
	})
	time.Sleep(2500 * time.Millisecond) // a flush past the one that wrote the entry: nothing more pending
	g1.Kill(t)

	g2 := startGatewayBinOn(t, caddyBin, portOf(t, g1), historyGlobal(dir), site, nil, secret)
	if got := entriesOf(journalQuery(t, g2, "limit=10000"), d.id); len(got) != 0 {
		t.Fatalf("the new process's memory journal has %v", got)
	}
	got := entriesOf(historyRange(t, g2), d.id)
	if len(got) != 1 || got[0].str("outcome") != "forwarded" || got[0].str("node") == "" {
		t.Fatalf("after the restart, the history has %v, want the forwarded entry with its node", got)
	}

	code, b := adminDo(t, g2, http.MethodGet, "/reready/deliveries/"+d.id)
	if code != 200 {
		t.Fatalf("GET /reready/deliveries/%s: %d %s", d.id, code, b)
	}
	var rec struct {
		Entries []obj             `json:"entries"`
		Body    []byte            `json:"body"`
		Headers map[string]string `json:"headers"`
		URI     string            `json:"uri"`
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	if len(rec.Entries) != 1 || !bytes.Equal(rec.Body, d.body) || rec.Headers["X-Reready-Delivery-Id"] != d.id ||
		rec.Headers["X-Reready-State"] != "complete" || rec.URI != "/hooks/app?x=1" {
		t.Fatalf("delivery record %s", b)
	}
	for _, secretish := range []string{d.sig, macOf(d.sig), "Signature-512", secret} {
		if bytes.Contains(b, []byte(secretish)) || bytes.Contains(readTree(t, dir), []byte(secretish)) {
			t.Errorf("the history holds %q", secretish)
		}
	}
	code, b = adminDo(t, g2, http.MethodGet, "/reready/deliveries/1-00000000000000000000000000000000")
	wantJSONError(t, "an unknown delivery", code, b, http.StatusNotFound, "no delivery")
	code, b = adminDo(t, g2, http.MethodGet, "/reready/deliveries?since=lately")
	wantJSONError(t, "a bad since", code, b, http.StatusBadRequest, `invalid since "lately"`)

	admin := adminAddr(t, g2)
	stdout := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, caddyBin, append([]string{"reready"}, args...)...)
		cmd.Env = harness.CaddyEnv(t.TempDir())
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Run(); err != nil {
			t.Fatalf("caddy reready %v: %v\n%s%s", args, err, out.String(), errOut.String())
		}
		return out.String()
	}
	if out := stdout("show", "--address", admin, "--body", d.id); out != string(d.body) {
		t.Fatalf("caddy reready show --body printed %q, want %q", out, d.body)
	}
	out := stdout("show", "--address", admin, d.id)
	for _, want := range []string{"delivery " + d.id, "forwarded", "X-Reready-State: complete", `"device_return_id": "` + d.ev.ID + `"`} {
		if !strings.Contains(out, want) {
			t.Errorf("caddy reready show lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, macOf(d.sig)) {
		t.Errorf("caddy reready show prints the MAC:\n%s", out)
	}
	if out := stdout("deliveries", "--address", admin, "--since", "1h"); !strings.Contains(out, d.ev.ID) {
		t.Errorf("caddy reready deliveries --since 1h lacks %s:\n%s", d.ev.ID, out)
	}
}

// Two gateways on one storage show one history: each delivery's entry
// once on either gateway (from its memory and the history alike), with
// the node that recorded it.
func TestHistoryFleet(t *testing.T) {
	const secret = "ssk_history_fleet_8d9e0f"
	dir := t.TempDir()
	app := harness.NewUpstream(t)
	app.Up(t)
	site := historySite(secret, app.Addr)
	g1 := startGatewayBinOn(t, caddyBin, 0, historyGlobal(dir), site, nil, secret)
	g2 := startGatewayBinOn(t, caddyBin, 0, historyGlobal(dir), site, nil, secret)
	d1 := signEvent(t, harness.Ruby, secret, harness.NewEvent("complete"))
	d2 := signEvent(t, harness.OpenSSL, secret, harness.NewEvent("pending_inspection"))
	if r := d1.post(t, g1, "/hooks/app"); r.status != 200 {
		t.Fatalf("d1: %d %q", r.status, r.body)
	}
	if r := d2.post(t, g2, "/hooks/app"); r.status != 200 {
		t.Fatalf("d2: %d %q", r.status, r.body)
	}
	nodes := map[string]string{}
	for _, g := range []*gateway{g1, g2} {
		harness.WaitUntil(t, "the other gateway's entry did not show", 3*logTimeout, func() bool {
			es := historyRange(t, g)
			return len(entriesOf(es, d1.id)) > 0 && len(entriesOf(es, d2.id)) > 0
		})
		es := historyRange(t, g)
		for _, d := range []signed{d1, d2} {
			got := entriesOf(es, d.id)
			if len(got) != 1 {
				t.Fatalf("%s shows %d entries of %s, want 1: %v", g.Base, len(got), d.id, got)
			}
			n := got[0].str("node")
			if n == "" || nodes[d.id] != "" && nodes[d.id] != n {
				t.Fatalf("%s: entry of %s has node %q (elsewhere %q)", g.Base, d.id, n, nodes[d.id])
			}
			nodes[d.id] = n
		}
	}
	if nodes[d1.id] == nodes[d2.id] {
		t.Errorf("two gateways, one node %q", nodes[d1.id])
	}
	// The ring's own entries carry the node too.
	if es := entriesOf(journalQuery(t, g1, "limit=10000"), d1.id); len(es) != 1 || es[0].str("node") != nodes[d1.id] {
		t.Errorf("g1's memory journal: %v, want node %q", es, nodes[d1.id])
	}
}
