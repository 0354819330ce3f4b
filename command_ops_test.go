package rereadyverify

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/verify"

	"github.com/caddyserver/caddy/v2"
)

// fakeAdmin serves the admin API of a test app over HTTP, so the CLI's
// requests go through caddycmd.AdminAPIRequest for real.
func fakeAdmin(t *testing.T, a *App) (addr string, epoch *string, down func(bool)) {
	t.Helper()
	withLiveApp(t, a)
	saved := processJournal
	processJournal = a.journal
	t.Cleanup(func() { processJournal = saved })
	var mu sync.Mutex
	isDown := false
	route := AdminAPI{}.Routes()[0]
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		d := isDown
		mu.Unlock()
		if d {
			http.Error(w, "restarting", http.StatusServiceUnavailable)
			return
		}
		if err := route.Handler.ServeHTTP(w, r); err != nil {
			ae := err.(caddy.APIError)
			w.WriteHeader(ae.HTTPStatus)
			json.NewEncoder(w).Encode(map[string]string{"error": ae.Err.Error()})
		}
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), &a.journal.epoch, func(b bool) { mu.Lock(); isDown = b; mu.Unlock() }
}

func TestCommandQueue(t *testing.T) {
	a := testApp(t)
	addr, _, _ := fakeAdmin(t, a)
	it := testItem(1, "ret\x1b[2Jcli") // a terminal escape in a payload value
	mustEnqueue(t, a.queue, it, 10)
	o := adminOptions{Address: addr}

	var out bytes.Buffer
	if err := runQueue(queueOptions{adminOptions: o}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), it.ID) || !strings.Contains(out.String(), "pending") || strings.Contains(out.String(), "\x1b") {
		t.Fatalf("list:\n%s", out.String())
	}
	out.Reset()
	if err := runQueue(queueOptions{adminOptions: o, JSON: true}, &out); err != nil {
		t.Fatal(err)
	}
	var items []QueueItem
	if err := json.Unmarshal(out.Bytes(), &items); err != nil || len(items) != 1 || items[0].ID != it.ID {
		t.Fatalf("list --json: %v %s", err, out.String())
	}
	out.Reset()
	if err := runQueue(queueOptions{adminOptions: o, Action: "retry", ID: it.ID}, &out); err != nil || !strings.Contains(out.String(), "is pending and due now") {
		t.Fatalf("retry: %v %s", err, out.String())
	}
	err := runQueue(queueOptions{adminOptions: o, Action: "retry", ID: "1-00000000000000000000000000000000"}, &out)
	if err == nil || !strings.Contains(err.Error(), `no queued delivery "1-00000000000000000000000000000000" (HTTP 404)`) {
		t.Fatalf("retry of an unknown id: %v", err)
	}
	for _, bad := range []queueOptions{{Action: "retry"}, {Action: "drop", ID: "../x"}, {Action: "explode"}} {
		bad.adminOptions = o
		if err := runQueue(bad, &out); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
	out.Reset()
	if err := runQueue(queueOptions{adminOptions: o, Action: "drop", ID: it.ID}, &out); err != nil || !strings.Contains(out.String(), "dropped "+it.ID) {
		t.Fatalf("drop: %v %s", err, out.String())
	}
	out.Reset()
	runQueue(queueOptions{adminOptions: o}, &out)
	if !strings.Contains(out.String(), "the queue is empty") {
		t.Fatalf("list after drop:\n%s", out.String())
	}
}

func TestCommandDeliveriesFollow(t *testing.T) {
	a := testApp(t)
	addr, epoch, down := fakeAdmin(t, a)
	a.record(journalEntry{at: queueT0, outcome: OutcomeForwarded, state: verify.StateComplete, returnID: rid("first"), status: 200})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out, errOut := &lockedBuffer{}, &lockedBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- runDeliveries(ctx, deliveriesOptions{adminOptions: adminOptions{Address: addr}, Limit: 10, Follow: true,
			Poll: 20 * time.Millisecond}, out, errOut)
	}()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: stdout:\n%s\nstderr:\n%s", what, out.String(), errOut.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitFor("the first entry", func() bool { return strings.Contains(out.String(), "first") })
	a.record(journalEntry{at: queueT0, outcome: OutcomeQueued, state: verify.StateFailed, returnID: rid("second"), status: 202})
	waitFor("a new entry", func() bool { return strings.Contains(out.String(), "second") })

	// The admin endpoint goes away and comes back (a reload that moves it,
	// a restart): following goes on; a new process starts a new journal.
	down(true)
	waitFor("a notice", func() bool { return strings.Contains(errOut.String(), "waiting for the admin endpoint") })
	a.journal = newJournal(10)
	processJournal = a.journal
	*epoch = a.journal.epoch
	a.record(journalEntry{at: queueT0, outcome: OutcomeRedelivered, state: verify.StateComplete, returnID: rid("third"), status: 200})
	down(false)
	waitFor("an entry of the new process", func() bool { return strings.Contains(out.String(), "third") })
	if !strings.Contains(errOut.String(), "restarted") {
		t.Errorf("no restart notice: %s", errOut.String())
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out.String(), "first"); n != 1 {
		t.Fatalf("the first entry printed %d times:\n%s", n, out.String())
	}
	if strings.Count(out.String(), "TIME") != 1 {
		t.Fatalf("header printed more than once:\n%s", out.String())
	}
}

func TestCommandDeliveriesErrors(t *testing.T) {
	for _, o := range []deliveriesOptions{{Limit: 0}, {Limit: 10, Outcome: "lost"}, {Limit: maxDeliveryLimit + 1}} {
		if err := runDeliveries(context.Background(), o, &bytes.Buffer{}, &bytes.Buffer{}); err == nil {
			t.Errorf("%+v: no error", o)
		}
	}
	// Nothing listening: the error names the address.
	err := runDeliveries(context.Background(), deliveriesOptions{Limit: 5, adminOptions: adminOptions{Address: "127.0.0.1:1"}}, &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("no admin endpoint: %v", err)
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// columnStarts returns the rune offsets where a table line's columns
// begin: its first rune, and each non-space after two spaces.
func columnStarts(line string) []int {
	r := []rune(line)
	var starts []int
	for i := range r {
		if r[i] != ' ' && (i == 0 || i >= 2 && r[i-1] == ' ' && r[i-2] == ' ') {
			starts = append(starts, i)
		}
	}
	return starts
}

// followLines runs `deliveries --follow` while record adds entries between
// polls, and returns the lines printed once want appears.
func followLines(t *testing.T, a *App, addr string, polls []func(), want []string) []string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out, errOut := &lockedBuffer{}, &lockedBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- runDeliveries(ctx, deliveriesOptions{adminOptions: adminOptions{Address: addr}, Limit: 10, Follow: true,
			Poll: 20 * time.Millisecond}, out, errOut)
	}()
	for i, poll := range polls {
		poll()
		deadline := time.Now().Add(5 * time.Second)
		for !strings.Contains(out.String(), want[i]) {
			if time.Now().After(deadline) {
				t.Fatalf("waiting for %q: stdout:\n%s\nstderr:\n%s", want[i], out.String(), errOut.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
}

func TestCommandDeliveriesColumnsAligned(t *testing.T) {
	a := testApp(t)
	addr, _, _ := fakeAdmin(t, a)
	longID := strings.Repeat("very-long-return-id-", 4) + "END"
	polls := []func(){
		func() {
			a.record(journalEntry{at: queueT0, outcome: OutcomeForwarded, state: verify.StateComplete, returnID: rid("r1"), status: 200})
		},
		// The second poll's rows are wider in every column: a follower
		// that sized columns per poll would shift them.
		func() {
			a.record(journalEntry{at: queueT0, outcome: OutcomeRedelivered, state: verify.StatePendingOutboundShipmentDelivery,
				returnID: rid(longID), status: 200, attempt: 12, duration: 12345 * time.Millisecond, reason: ReasonRedeliveryTimeout})
			a.record(journalEntry{at: queueT0, outcome: OutcomeRejected, state: "an-unknown-state-" + strings.Repeat("x", 40),
				returnID: rid("r2\x1b[2J"), status: 401, reason: Reason("a_reason_far_longer_than_any_known_one")})
		},
	}
	lines := followLines(t, a, addr, polls, []string{"r1", "r2"})
	if len(lines) != 4 {
		t.Fatalf("%d lines, want a header and 3 rows:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	header := columnStarts(lines[0])
	if len(header) != 8 {
		t.Fatalf("header %q has columns at %v, want 8", lines[0], header)
	}
	for _, row := range lines[1:] {
		if got := columnStarts(row); fmt.Sprint(got) != fmt.Sprint(header) {
			t.Errorf("columns of\n%s\nstart at %v, the header's\n%s\nat %v", row, got, lines[0], header)
		}
	}
	all := strings.Join(lines, "\n")
	if strings.Contains(all, longID) || !strings.Contains(all, longID[:20]) || !strings.Contains(all, "…") {
		t.Errorf("the long return id is not clipped with an ellipsis:\n%s", all)
	}
	if strings.Contains(all, "\x1b") {
		t.Errorf("a control character reached the terminal:\n%s", all)
	}

	// A listing without --follow has the same columns.
	var out bytes.Buffer
	if err := runDeliveries(context.Background(), deliveriesOptions{adminOptions: adminOptions{Address: addr}, Limit: 10}, &out, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	listed := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(listed) != 4 || listed[0] != lines[0] {
		t.Fatalf("listing:\n%s\nfollow:\n%s", out.String(), all)
	}
	for _, row := range listed[1:] {
		if got := columnStarts(row); fmt.Sprint(got) != fmt.Sprint(header) {
			t.Errorf("listed row\n%s\nhas columns at %v, want %v", row, got, header)
		}
	}
}

func TestCommandDeliveriesTestEvents(t *testing.T) {
	a := testApp(t)
	addr, _, _ := fakeAdmin(t, a)
	a.record(journalEntry{at: queueT0, outcome: OutcomeForwarded, state: verify.StateComplete, returnID: rid("real-1"), status: 202})
	a.record(journalEntry{at: queueT0, outcome: OutcomeForwarded, state: verify.StateComplete, returnID: rid("test-1"), status: 202, test: true})
	a.record(journalEntry{at: queueT0, outcome: OutcomeRedelivered, state: verify.StateComplete, returnID: rid("test-2"), status: 200, test: true})
	list := func(t *testing.T, o deliveriesOptions) ([]string, error) {
		t.Helper()
		o.adminOptions, o.Limit = adminOptions{Address: addr}, 10
		var out bytes.Buffer
		err := runDeliveries(context.Background(), o, &out, &bytes.Buffer{})
		return strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n"), err
	}
	// rowOf finds the row of a return id, and checks its columns.
	rowOf := func(t *testing.T, lines []string, id string) string {
		t.Helper()
		for _, l := range lines[1:] {
			if strings.Contains(l, id) {
				if fmt.Sprint(columnStarts(l)) != fmt.Sprint(columnStarts(lines[0])) {
					t.Errorf("row\n%s\nis not aligned with\n%s", l, lines[0])
				}
				return l
			}
		}
		return ""
	}

	t.Run("marked", func(t *testing.T) {
		lines, err := list(t, deliveriesOptions{})
		if err != nil || len(lines) != 4 {
			t.Fatalf("%v:\n%s", err, strings.Join(lines, "\n"))
		}
		if r := rowOf(t, lines, "real-1"); !strings.Contains(r, "forwarded ") || strings.Contains(r, "test)") {
			t.Errorf("a real delivery: %q", r)
		}
		if r := rowOf(t, lines, "test-1"); !strings.Contains(r, "forwarded (test)") {
			t.Errorf("a test event not marked: %q", r)
		}
		if r := rowOf(t, lines, "test-2"); !strings.Contains(r, "redelivered (test)") {
			t.Errorf("a redelivered test event not marked: %q", r)
		}
	})
	t.Run("--test", func(t *testing.T) {
		lines, err := list(t, deliveriesOptions{Test: true})
		all := strings.Join(lines, "\n")
		if err != nil || len(lines) != 3 || strings.Contains(all, "real-1") || rowOf(t, lines, "test-1") == "" || rowOf(t, lines, "test-2") == "" {
			t.Fatalf("%v:\n%s", err, all)
		}
	})
	t.Run("--no-test", func(t *testing.T) {
		lines, err := list(t, deliveriesOptions{NoTest: true})
		all := strings.Join(lines, "\n")
		if err != nil || len(lines) != 2 || rowOf(t, lines, "real-1") == "" || strings.Contains(all, "test") {
			t.Fatalf("%v:\n%s", err, all)
		}
	})
	t.Run("both", func(t *testing.T) {
		_, err := list(t, deliveriesOptions{Test: true, NoTest: true})
		if err == nil || !strings.Contains(err.Error(), "--test") || !strings.Contains(err.Error(), "--no-test") {
			t.Fatalf("--test --no-test: %v", err)
		}
	})
	t.Run("cobra flags", func(t *testing.T) {
		out, err := cmdCobra(t, []string{"deliveries", "--address", addr, "--no-test"}, "")
		if err != nil || !strings.Contains(out, "real-1") || strings.Contains(out, "test-1") {
			t.Fatalf("--no-test: %v\n%s", err, out)
		}
		out, err = cmdCobra(t, []string{"deliveries", "--address", addr, "--test", "--no-test"}, "")
		if err == nil {
			t.Fatalf("--test --no-test: no error\n%s", out)
		}
	})
}

// stubAdmin answers GET /reready/queue with fixed JSON, as a gateway of
// another version would.
func stubAdmin(t *testing.T, queueJSON string) adminOptions {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/reready/queue" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, queueJSON)
	}))
	t.Cleanup(srv.Close)
	return adminOptions{Address: strings.TrimPrefix(srv.URL, "http://")}
}

// tableCells splits a table's rows into cells at the header's column starts.
func tableCells(t *testing.T, out string) (header []string, rows map[string][]string) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	starts := columnStarts(lines[0])
	cells := func(line string) []string {
		r := []rune(line)
		var cs []string
		for i, s := range starts {
			end := len(r)
			if i+1 < len(starts) {
				end = min(starts[i+1], len(r))
			}
			if s > len(r) {
				cs = append(cs, "")
				continue
			}
			cs = append(cs, strings.TrimSpace(string(r[s:end])))
		}
		return cs
	}
	header, rows = cells(lines[0]), map[string][]string{}
	for _, l := range lines[1:] {
		c := cells(l)
		rows[c[0]] = c
	}
	return header, rows
}

func TestCommandQueueHeldBehindAndLastStatus(t *testing.T) {
	const (
		first = "1796354632-8f80b9fb0c1d2e3f4a5b6c7d8e9f0a1b"
		held  = "1796354633-0123456789abcdef0123456789abcdef"
		dead  = "1796354600-fedcba9876543210fedcba9876543210"
		old   = "1796354500-00000000000000000000000000000001"
	)
	tests := []struct {
		name, json string
		want       map[string][2]string // id: next attempt, last status
	}{
		{"this gateway", `[
			{"id":"` + first + `","status":"pending","device_return_id":"r1","state":"complete","test":false,"received_at":"2026-11-29T12:00:00Z",
			 "attempts":2,"next_attempt_at":"2026-11-29T12:01:00Z","last_status":502,"last_error":"connection refused","path":"/h","app_failing_since":null,"held_behind":null},
			{"id":"` + held + `","status":"pending","device_return_id":"r1","state":"complete","test":false,"received_at":"2026-11-29T12:00:01Z",
			 "attempts":0,"next_attempt_at":null,"last_status":null,"last_error":"","path":"/h","app_failing_since":null,"held_behind":"` + first + `"},
			{"id":"` + dead + `","status":"dead","device_return_id":"r2","state":"failed","test":false,"received_at":"2026-11-28T12:00:00Z",
			 "attempts":9,"next_attempt_at":null,"last_status":503,"last_error":"503 Service Unavailable","path":"/h","app_failing_since":null,"held_behind":null}]`,
			map[string][2]string{first: {"2026-11-29T12:01:00Z", "502"}, held: {"held behind 8f80b9fb", "-"}, dead: {"-", "503"}}},
		{"an older gateway", `[
			{"id":"` + old + `","status":"pending","device_return_id":"r3","state":"complete","test":false,"received_at":"2026-11-29T12:00:00Z",
			 "attempts":0,"next_attempt_at":"2026-11-29T12:00:00Z","last_status":0,"last_error":""}]`,
			map[string][2]string{old: {"2026-11-29T12:00:00Z", "-"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := stubAdmin(t, tc.json)
			var out bytes.Buffer
			if err := runQueue(queueOptions{adminOptions: o}, &out); err != nil {
				t.Fatal(err)
			}
			header, rows := tableCells(t, out.String())
			next, last := slices.Index(header, "NEXT ATTEMPT"), slices.Index(header, "LAST STATUS")
			if next < 0 || last < 0 {
				t.Fatalf("header %q", header)
			}
			if len(rows) != len(tc.want) {
				t.Fatalf("%d rows, want %d:\n%s", len(rows), len(tc.want), out.String())
			}
			for id, want := range tc.want {
				row, ok := rows[id]
				if !ok {
					t.Fatalf("no row for %s:\n%s", id, out.String())
				}
				if row[next] != want[0] || row[last] != want[1] {
					t.Errorf("%s: next attempt %q, last status %q; want %q, %q\n%s", id, row[next], row[last], want[0], want[1], out.String())
				}
			}
			// --json passes the gateway's fields on, those this CLI does not know too.
			out.Reset()
			if err := runQueue(queueOptions{adminOptions: o, JSON: true}, &out); err != nil {
				t.Fatal(err)
			}
			var items []map[string]any
			if err := json.Unmarshal(out.Bytes(), &items); err != nil || len(items) != len(tc.want) {
				t.Fatalf("--json: %v\n%s", err, out.String())
			}
			if strings.Contains(tc.json, "held_behind") && !strings.Contains(out.String(), `"held_behind": "`+first+`"`) {
				t.Errorf("--json lost held_behind:\n%s", out.String())
			}
		})
	}
}
