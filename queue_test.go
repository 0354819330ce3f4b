package rereadyverify

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/verify"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

var queueT0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

func testQueue(t *testing.T) (*queue, string) {
	t.Helper()
	dir := t.TempDir()
	return newQueue(&certmagic.FileStorage{Path: dir}, zap.NewNop()), dir
}

func testItem(n int, returnID string) *queueItem {
	next := queueT0
	return &queueItem{
		ID:             randomDeliveryID(queueT0.Unix()).String(),
		Status:         ItemPending,
		DeviceReturnID: returnID,
		State:          verify.StateComplete,
		ReceivedAt:     queueT0.Add(time.Duration(n) * time.Second),
		NextAttemptAt:  &next,
		MaxAge:         int64(time.Hour),
		Host:           "hooks.example",
		URI:            "/hook?keep=1",
		Header:         http.Header{"Content-Type": {"application/json"}},
		Body:           []byte(fmt.Sprintf(`{"device_return_id":%q,"state":"complete","n":%d}`, returnID, n)),
	}
}

func mustEnqueue(t *testing.T, q *queue, it *queueItem, maxItems int) {
	t.Helper()
	what, err := q.enqueue(context.Background(), it, maxItems, queueT0, nil)
	if err != nil || what != enqueuedNew {
		t.Fatalf("enqueue %s: %v, %v", it.ID, what, err)
	}
}

func lineOf(t *testing.T, q *queue, returnID string) []string {
	t.Helper()
	rec, err := q.loadReturn(context.Background(), returnID)
	if err != nil {
		t.Fatal(err)
	}
	return rec.IDs
}

func TestQueueLinePerReturn(t *testing.T) {
	q, _ := testQueue(t)
	ctx := context.Background()
	a1, a2, b1 := testItem(1, "ret-a"), testItem(2, "ret-a"), testItem(3, "ret/b") // a slash in an id is only a name
	for _, it := range []*queueItem{a1, a2, b1} {
		mustEnqueue(t, q, it, 10)
	}
	if got := lineOf(t, q, "ret-a"); fmt.Sprint(got) != fmt.Sprint([]string{a1.ID, a2.ID}) {
		t.Fatalf("line of ret-a = %v, want a1, a2", got)
	}
	for id, want := range map[string]bool{"ret-a": true, "ret/b": true, "ret-c": false} {
		if held, err := q.held(ctx, id); err != nil || held != want {
			t.Errorf("held(%q) = %v, %v; want %v", id, held, err, want)
		}
	}

	// A resend of a queued delivery is left as it is.
	again := *a1
	again.Body = []byte(`{"other":true}`)
	if what, err := q.enqueue(ctx, &again, 10, queueT0, nil); err != nil || what != enqueuedExisted {
		t.Fatalf("enqueue of a stored id: %v, %v", what, err)
	}
	if got, _ := q.loadItem(ctx, a1.ID); string(got.Body) != string(a1.Body) {
		t.Fatalf("a resend replaced the stored body: %s", got.Body)
	}

	// Leaving the line releases the return once it is empty.
	if err := q.leaveLine(ctx, "ret-a", a1.ID); err != nil {
		t.Fatal(err)
	}
	if got := lineOf(t, q, "ret-a"); len(got) != 1 || got[0] != a2.ID {
		t.Fatalf("line after a1 left = %v", got)
	}
	if err := q.leaveLine(ctx, "ret-a", a2.ID); err != nil {
		t.Fatal(err)
	}
	if held, _ := q.held(ctx, "ret-a"); held {
		t.Fatal("ret-a still held with an empty line")
	}
	if q.storage.Exists(ctx, returnKey("ret-a")) {
		t.Fatal("an empty line is kept in storage")
	}
}

func TestQueueMaxItems(t *testing.T) {
	q, _ := testQueue(t)
	for i := range 3 {
		mustEnqueue(t, q, testItem(i, fmt.Sprint("r", i)), 3)
	}
	it := testItem(9, "r9")
	if _, err := q.enqueue(context.Background(), it, 3, queueT0, nil); !errors.Is(err, errQueueFull) {
		t.Fatalf("4th enqueue at max_items 3: %v, want errQueueFull", err)
	}
	if q.storage.Exists(context.Background(), itemKey(it.ID)) {
		t.Fatal("the refused item was stored")
	}
	if held, _ := q.held(context.Background(), "r9"); held {
		t.Fatal("the refused item holds its return")
	}
}

func TestQueueRetryAndDrop(t *testing.T) {
	q, _ := testQueue(t)
	ctx := context.Background()
	old, newer := testItem(1, "ret"), testItem(2, "ret")
	mustEnqueue(t, q, old, 10)
	mustEnqueue(t, q, newer, 10)

	// old dies: it leaves the line; a retry puts it back before newer,
	// with a fresh max_age counted from now.
	old.Status, old.NextAttemptAt = ItemDead, nil
	if err := q.storeItem(ctx, old); err != nil {
		t.Fatal(err)
	}
	if err := q.leaveLine(ctx, "ret", old.ID); err != nil {
		t.Fatal(err)
	}
	now := queueT0.Add(5 * time.Hour)
	it, err := q.retry(ctx, old.ID, now)
	if err != nil {
		t.Fatal(err)
	}
	if it.Status != ItemPending || !it.NextAttemptAt.Equal(now) || !it.deadline().Equal(now.Add(time.Hour)) {
		t.Fatalf("retried item: status %s, next %v, deadline %v", it.Status, it.NextAttemptAt, it.deadline())
	}
	if got := lineOf(t, q, "ret"); fmt.Sprint(got) != fmt.Sprint([]string{old.ID, newer.ID}) {
		t.Fatalf("line after retry = %v, want old first", got)
	}

	if _, err := q.retry(ctx, "1-00000000000000000000000000000000", now); !errors.Is(err, errItemNotFound) {
		t.Fatalf("retry of an unknown id: %v", err)
	}
	dropped, err := q.drop(ctx, old.ID)
	if err != nil || dropped.ID != old.ID {
		t.Fatalf("drop: %v, %v", dropped, err)
	}
	if got := lineOf(t, q, "ret"); len(got) != 1 || got[0] != newer.ID {
		t.Fatalf("line after drop = %v", got)
	}
	if _, err := q.drop(ctx, old.ID); !errors.Is(err, errItemNotFound) {
		t.Fatalf("second drop: %v", err)
	}
}

func TestQueueCorruptItem(t *testing.T) {
	q, dir := testQueue(t)
	ctx := context.Background()
	good := testItem(1, "ret")
	mustEnqueue(t, q, good, 10)
	const bad = "1744831201-0123456789abcdef0123456789abcdef"
	path := filepath.Join(dir, filepath.FromSlash(itemKey(bad)))
	if err := os.WriteFile(path, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := q.loadItem(ctx, bad); !errors.Is(err, errItemCorrupt) {
		t.Fatalf("loadItem of garbage: %v, want errItemCorrupt", err)
	}

	// Views list it as dead with its error, next to the good one.
	view, err := q.view(ctx)
	if err != nil || len(view) != 2 {
		t.Fatalf("view: %v, %v", view, err)
	}
	var seen bool
	for _, v := range view {
		if v.ID == bad {
			seen = true
			if v.Status != ItemDead || !strings.Contains(v.LastError, "unreadable") || v.NextAttemptAt != nil {
				t.Fatalf("corrupt item viewed as %+v", v)
			}
		}
	}
	if !seen {
		t.Fatal("the corrupt item is not listed")
	}

	// Set aside, it parses as a dead item keeping its bytes; it can be
	// dropped but not retried.
	it, err := q.setAside(ctx, bad, errors.New("unreadable queued delivery: boom"))
	if err != nil || it == nil || !it.Corrupt || string(it.Raw) != "{not json" {
		t.Fatalf("setAside: %+v, %v", it, err)
	}
	if got, err := q.loadItem(ctx, bad); err != nil || got.Status != ItemDead || !got.Corrupt {
		t.Fatalf("reload after setAside: %+v, %v", got, err)
	}
	if _, err := q.retry(ctx, bad, queueT0); !errors.Is(err, errItemCorrupt) {
		t.Fatalf("retry of a set-aside item: %v", err)
	}
	if _, err := q.drop(ctx, bad); err != nil {
		t.Fatalf("drop of a set-aside item: %v", err)
	}
}

func TestQueueItemView(t *testing.T) {
	it := testItem(1, "ret")
	it.Header.Set("Authorization", "Basic c2VjcmV0")
	it.Header.Set(hdrSignature, "t=1,v=abc")
	v := it.view()
	if v.NextAttemptAt == nil || *v.NextAttemptAt != "2026-11-29T12:00:00Z" || v.ReceivedAt != "2026-11-29T12:00:01Z" {
		t.Fatalf("view times: %+v", v)
	}
	it.Status = ItemDead
	if it.view().NextAttemptAt != nil {
		t.Fatal("a dead item shows a next attempt")
	}
}

func TestValidItemName(t *testing.T) {
	for _, ok := range []string{"1744831201-0123456789abcdef0123456789abcdef", "0-00000000000000000000000000000000"} {
		if !validItemName(ok) {
			t.Errorf("validItemName(%q) = false", ok)
		}
	}
	// Only a delivery id in its text form names an item: file_system's
	// temporary files (os.CreateTemp: all digits) sit beside the items.
	for _, bad := range []string{"", ".", "..", "a/b", "../x", "a b", strings.Repeat("a", 129), "é", "a", "x.y_z-1",
		"1493711406", "1744831201-0123456789ABCDEF0123456789ABCDEF", "01744831201-0123456789abcdef0123456789abcdef",
		"1744831201-0123456789abcdef0123456789abcde", "1744831201-0123456789abcdef0123456789abcdef.tmp"} {
		if validItemName(bad) {
			t.Errorf("validItemName(%q) = true", bad)
		}
	}
}

func TestBackoffAndNextAttempt(t *testing.T) {
	for attempt, base := range map[int]time.Duration{1: time.Second, 2: 5 * time.Second, 9: 30 * time.Minute, 10: time.Hour, 50: time.Hour} {
		for range 50 {
			d := backoff(attempt)
			if d < base*8/10 || d > base*12/10 {
				t.Fatalf("backoff(%d) = %v, want %v ±20%%", attempt, d, base)
			}
		}
	}
	it := testItem(0, "r") // received at queueT0, max_age 1h
	now := queueT0.Add(30 * time.Minute)
	if got := nextAttempt(it, 1, now, "120"); !got.Equal(now.Add(2 * time.Minute)) {
		t.Errorf("Retry-After 120: next %v", got)
	}
	date := now.Add(10 * time.Minute).Format(http.TimeFormat)
	if got := nextAttempt(it, 1, now, date); !got.Equal(now.Add(10 * time.Minute)) {
		t.Errorf("Retry-After date: next %v", got)
	}
	if got := nextAttempt(it, 1, now, "0"); !got.Equal(now.Add(time.Second)) {
		t.Errorf("Retry-After 0: next %v, want 1s later", got)
	}
	if got := nextAttempt(it, 20, now, ""); !got.Equal(it.deadline()) {
		t.Errorf("hourly step past max_age: next %v, want the deadline %v", got, it.deadline())
	}
	if got := nextAttempt(it, 1, now, "soon"); got.Before(now.Add(800*time.Millisecond)) || got.After(now.Add(1200*time.Millisecond)) {
		t.Errorf("unparsable Retry-After: next %v, want the 1s step", got)
	}
}

func TestQueueableAndRefused(t *testing.T) {
	for code, want := range map[int][2]bool{
		200: {false, false}, 404: {false, true}, 400: {false, true}, 408: {true, false},
		429: {true, false}, 500: {true, false}, 503: {true, false}, 302: {false, false},
	} {
		if queueable(code) != want[0] || refused(code) != want[1] {
			t.Errorf("%d: queueable %v refused %v, want %v", code, queueable(code), refused(code), want)
		}
	}
}

// The live path asks the storage whether a return is held every time: a
// delivery another gateway queued a moment ago holds it at once.
func TestQueueHeldAsksTheStorage(t *testing.T) {
	q, dir := testQueue(t)
	other := newQueue(&certmagic.FileStorage{Path: dir}, zap.NewNop()) // another gateway
	ctx := context.Background()
	if held, err := q.held(ctx, "r1"); err != nil || held {
		t.Fatalf("empty queue: held %v, %v", held, err)
	}
	mustEnqueue(t, other, testItem(1, "r1"), 10)
	if held, err := q.held(ctx, "r1"); err != nil || !held {
		t.Fatalf("queued by another gateway: held %v, %v", held, err)
	}
}

// With no line in the queue, the live path reads the returns' directory
// at most once per lineFresh, not each return's record per delivery; on a
// storage without a directory probe, through List, where only an answer
// without error counts as empty. A line started on another gateway holds
// its return once the enqueue has answered.
func TestQueueHeldReadOncePerFresh(t *testing.T) {
	dir := t.TempDir()
	// FileStorage lists an absent directory as an error (not-exist), which
	// counts as "cannot tell"; an emptied one, as a queue has after its
	// first delivery, lists as empty.
	if err := os.MkdirAll(filepath.Join(dir, filepath.FromSlash(queueReturnsPrefix)), 0o700); err != nil {
		t.Fatal(err)
	}
	st := &countingLineStorage{Storage: &certmagic.FileStorage{Path: dir}}
	q, other := newQueue(st, zap.NewNop()), newQueue(st, zap.NewNop())
	ctx := context.Background()
	start := time.Now()
	const n = 50
	for i := range n {
		if held, err := q.held(ctx, fmt.Sprint("r", i)); err != nil || held {
			t.Fatalf("empty queue: held %v, %v", held, err)
		}
	}
	lists, most := st.lists.Load(), int64(time.Since(start)/lineFresh)+1
	if lists == 0 || lists > most || st.stats.Load() != 0 {
		t.Fatalf("%d listings and %d reads of a return's record for %d deliveries in %s; want 1 to %d listings, no reads",
			lists, st.stats.Load(), n, time.Since(start), most)
	}
	mustEnqueue(t, other, testItem(1, "r1"), 10)
	if held, err := q.held(ctx, "r1"); err != nil || !held {
		t.Fatalf("queued by another gateway: held %v, %v", held, err)
	}
	if held, err := q.held(ctx, "r2"); err != nil || held {
		t.Fatalf("another return: held %v, %v", held, err)
	}
	st.failList.Store(true) // a failed listing is not an empty one
	q.linesRead.Store(nil)
	if held, err := q.held(ctx, "r1"); err != nil || !held {
		t.Fatalf("listing failed: held %v, %v", held, err)
	}
}

// countingLineStorage counts listings of the returns and reads of a
// return's record, and can fail the listings; it is not a
// *certmagic.FileStorage, so no directory probe answers first.
type countingLineStorage struct {
	certmagic.Storage
	lists, stats atomic.Int64
	failList     atomic.Bool
}

func (s *countingLineStorage) List(ctx context.Context, prefix string, recursive bool) ([]string, error) {
	if prefix == queueReturnsPrefix {
		s.lists.Add(1)
		if s.failList.Load() {
			return nil, errors.New("injected listing fault")
		}
	}
	return s.Storage.List(ctx, prefix, recursive)
}

func (s *countingLineStorage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	if strings.HasPrefix(key, queueReturnsPrefix+"/") {
		s.stats.Add(1)
	}
	return s.Storage.Stat(ctx, key)
}

func TestQueueFirstInLine(t *testing.T) {
	q, _ := testQueue(t)
	ctx := context.Background()
	a1, a2, a3, orphan := testItem(1, "ret"), testItem(2, "ret"), testItem(4, "ret"), testItem(3, "ret")
	mustEnqueue(t, q, a1, 10)
	mustEnqueue(t, q, a2, 10)
	mustEnqueue(t, q, a3, 10)
	if err := q.storeItem(ctx, orphan); err != nil { // stored, never lined up
		t.Fatal(err)
	}
	for _, c := range []struct {
		it   *queueItem
		want bool
	}{{a1, true}, {a2, false}, {orphan, false}, {a3, false}} {
		if got, err := q.firstInLine(ctx, c.it); err != nil || got != c.want {
			t.Errorf("firstInLine(%d) = %v, %v; want %v", c.it.ReceivedAt.Second(), got, err, c.want)
		}
	}
	// The orphan is put back in its line by arrival, not let through.
	if got := lineOf(t, q, "ret"); fmt.Sprint(got) != fmt.Sprint([]string{a1.ID, a2.ID, orphan.ID, a3.ID}) {
		t.Errorf("line after firstInLine of an orphan = %v, want a1 a2 orphan a3", got)
	}
	a1.Status = ItemDead // dead, still named in the line: no longer holds a2
	if err := q.storeItem(ctx, a1); err != nil {
		t.Fatal(err)
	}
	if got, _ := q.firstInLine(ctx, a2); !got {
		t.Error("a dead delivery still holds its return's line")
	}
}

// An attempt's outcome is recorded only over the version attempted: an
// item another gateway delivered, dropped or recorded meanwhile (it took
// the item after this one's lock was lost) is not written back.
func TestQueueStoreIfUnchanged(t *testing.T) {
	q, _ := testQueue(t)
	ctx := context.Background()
	it := testItem(1, "ret")
	mustEnqueue(t, q, it, 10)
	was := versionOf(it)

	other := *it // another gateway records an attempt first
	other.Attempts = 5
	if err := q.storeItem(ctx, &other); err != nil {
		t.Fatal(err)
	}
	mine := *it
	mine.Attempts = 1
	if stored, err := q.storeIfUnchanged(ctx, &mine, was); err != nil || stored {
		t.Fatalf("over a changed item: stored %v, %v", stored, err)
	}
	if got, _ := q.loadItem(ctx, it.ID); got.Attempts != 5 {
		t.Fatalf("the other gateway's record was overwritten: attempts %d", got.Attempts)
	}
	if stored, err := q.storeIfUnchanged(ctx, &mine, versionOf(&other)); err != nil || !stored {
		t.Fatalf("over the version attempted: stored %v, %v", stored, err)
	}
	if err := q.deleteItem(ctx, it.ID); err != nil {
		t.Fatal(err)
	}
	if stored, err := q.storeIfUnchanged(ctx, &mine, versionOf(&mine)); err != nil || stored {
		t.Fatalf("over a delivered (deleted) item: stored %v, %v", stored, err)
	}
	if _, err := q.loadItem(ctx, it.ID); !errors.Is(err, errItemNotFound) {
		t.Fatalf("a delivered item came back: %v", err)
	}
}
