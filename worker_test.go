package rereadyverify

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// testWorker is a worker over q with a clock the test moves.
func testWorker(t *testing.T, q *queue, clock *time.Time) (*worker, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	a := &App{logger: zap.New(core), journal: newJournal(100), queue: q}
	w := newWorker(a, q, zap.New(core))
	w.now = func() time.Time { return *clock }
	a.worker.Store(w)
	return w, logs
}

func ids(cs []candidate) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.item.ID)
	}
	return out
}

// While a route's app fails, one delivery of it is tried at a time, the
// oldest due, at growing intervals; a success releases the rest.
func TestWorkerProbesAFailingRoute(t *testing.T) {
	q, _ := testQueue(t)
	clock := queueT0.Add(time.Minute)
	w, _ := testWorker(t, q, &clock)
	ctx := context.Background()
	var items []*queueItem
	for i := range 6 {
		it := testItem(i, fmt.Sprint("r", i))
		next := queueT0.Add(time.Duration(i) * time.Second) // all due; item 0 waited longest
		it.NextAttemptAt = &next
		mustEnqueue(t, q, it, 100)
		items = append(items, it)
	}
	if err := w.refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if got := w.due(ctx, clock, 4); len(got) != 4 || got[0].probe {
		t.Fatalf("healthy route: %d candidates (probe %v), want 4 ordinary ones", len(got), len(got) > 0 && got[0].probe)
	}

	for range probeAfter - 1 { // single failures of a flapping app change nothing
		w.failed("/hook", clock, "", false)
	}
	if got := w.due(ctx, clock, 4); len(got) != 4 || !w.failingSince("/hook").IsZero() {
		t.Fatalf("after %d failures: %d candidates, want 4", probeAfter-1, len(got))
	}
	w.failed("/hook", clock, "", false)
	if since := w.failingSince("/hook"); !since.Equal(clock) {
		t.Fatalf("failingSince = %v, want %v", since, clock)
	}
	got := w.due(ctx, clock, 4)
	if len(got) != 0 {
		t.Fatalf("right after a failure: %v, want no attempt before the next probe", ids(got))
	}
	clock = clock.Add(maxProbeInterval)
	got = w.due(ctx, clock, 4)
	if len(got) != 1 || !got[0].probe || got[0].item.ID != items[0].ID {
		t.Fatalf("failing route: %v, want only the oldest due as a probe", ids(got))
	}
	if again := w.due(ctx, clock, 4); len(again) != 0 {
		t.Fatalf("with a probe in flight: %v, want none", ids(again))
	}
	// The probe failed: the next one waits longer than the first.
	w.mu.Lock()
	w.routes["/hook"].probe = ""
	w.mu.Unlock()
	w.failed("/hook", clock, "", true)
	if got := w.due(ctx, clock.Add(time.Second), 4); len(got) != 0 {
		t.Fatalf("1 s after a failed probe: %v", ids(got))
	}
	if got := w.due(ctx, clock.Add(maxProbeInterval), 4); len(got) != 1 {
		t.Fatalf("after the probe interval: %v, want one probe", ids(got))
	}
	w.mu.Lock()
	w.routes["/hook"].probe = ""
	w.mu.Unlock()
	// Retry-After from the app sets the next probe.
	w.failed("/hook", clock, "120", true)
	if got := w.due(ctx, clock.Add(119*time.Second), 4); len(got) != 0 {
		t.Fatalf("before Retry-After: %v", ids(got))
	}

	// A success on the route (a probe's, or a live one) releases the rest.
	w.kick("/hook")
	if !w.failingSince("/hook").IsZero() {
		t.Fatal("the route still fails after a success")
	}
	if got := w.due(ctx, clock, 4); len(got) != 4 || got[0].probe {
		t.Fatalf("after a success: %v, want 4 ordinary ones", ids(got))
	}

	// An item whose max_age passed while its route fails is given up on
	// without an attempt.
	for range probeAfter {
		w.failed("/hook", clock, "", false)
	}
	late := clock.Add(2 * time.Hour) // max_age is 1h
	got = w.due(ctx, late, 10)
	expired := 0
	for _, c := range got {
		if c.expire {
			expired++
		}
	}
	if expired != 6 {
		t.Fatalf("past max_age on a failing route: %d of %d candidates expire, want 6", expired, len(got))
	}
}

// A storage lock found held for lockTakeoverAfter is waited for with the
// storage's Lock, which breaks a lock left behind: an empty lock file (a
// full disk during the lock's write) is taken within seconds, and logged.
func TestWorkerTakesOverALeftLock(t *testing.T) {
	fsys := &certmagic.FileStorage{Path: t.TempDir()}
	q := newQueue(fsys, zap.NewNop())
	clock := queueT0.Add(time.Minute)
	w, logs := testWorker(t, q, &clock)
	it := testItem(1, "r1")
	mustEnqueue(t, q, it, 10)
	if err := w.refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	lock := filepath.Join(fsys.Path, "locks", certmagic.StorageKeys.Safe(lockName(itemKey(it.ID)))+".lock")
	if err := os.MkdirAll(filepath.Dir(lock), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(lock, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if unlock, _ := w.lock(it.ID); unlock != nil {
		t.Fatal("took a lock whose file exists, at once")
	}
	clock = clock.Add(lockTakeoverAfter / 2)
	if unlock, _ := w.lock(it.ID); unlock != nil {
		t.Fatal("took a held lock before lockTakeoverAfter")
	}
	clock = clock.Add(lockTakeoverAfter)
	unlock, busy := w.lock(it.ID)
	if unlock == nil || busy == nil {
		t.Fatal("an empty lock file was not taken over after lockTakeoverAfter")
	}
	unlock(context.Background(), zap.NewNop())
	if _, err := os.Stat(lock); !os.IsNotExist(err) {
		t.Fatalf("the lock file is still there: %v", err)
	}

	// attempt logs the takeover at error level (the item is unchanged:
	// whoever held the lock never finished an attempt).
	if err := os.WriteFile(lock, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	w.attempt(candidate{item: it})
	clock = clock.Add(2 * lockTakeoverAfter)
	w.attempt(candidate{item: it}) // the app is not set up: the attempt itself fails
	found := logs.FilterMessageSnippet("took over the storage lock").FilterField(zap.String("id", it.ID)).All()
	if len(found) != 1 || found[0].Level != zapcore.ErrorLevel {
		t.Fatalf("takeover log lines: %v", found)
	}
}

// hidingStorage lists every key but one, as a networked storage does after
// a delete that removed a key's index entry but not its value.
type hidingStorage struct {
	*certmagic.FileStorage
	hidden string
}

func (s *hidingStorage) List(ctx context.Context, prefix string, recursive bool) ([]string, error) {
	keys, err := s.FileStorage.List(ctx, prefix, recursive)
	return slices.DeleteFunc(keys, func(k string) bool { return strings.HasSuffix(k, "/"+s.hidden) }), err
}

// A pending item first in its line that the storage no longer lists is
// still tried (and stored again), or its whole return would wait forever.
func TestWorkerTriesAnUnlistedHead(t *testing.T) {
	st := &hidingStorage{FileStorage: &certmagic.FileStorage{Path: t.TempDir()}}
	q := newQueue(st, zap.NewNop())
	clock := queueT0.Add(time.Minute)
	w, _ := testWorker(t, q, &clock)
	ctx := context.Background()
	d1, d2 := testItem(1, "ret"), testItem(2, "ret")
	mustEnqueue(t, q, d1, 10)
	mustEnqueue(t, q, d2, 10)
	st.hidden = d1.ID
	if err := w.refresh(ctx); err != nil {
		t.Fatal(err)
	}
	got := w.due(ctx, clock, 4)
	if len(got) != 1 || got[0].item.ID != d1.ID || !got[0].relist {
		t.Fatalf("candidates %v; want the unlisted head d1, to be stored again", ids(got))
	}
}
