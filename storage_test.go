package rereadyverify

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// faultyStorage is a file_system storage (not *certmagic.FileStorage, so
// the generic paths are taken) whose calls can be made to fail.
type faultyStorage struct {
	*certmagic.FileStorage
	listFails  atomic.Int32 // the next n Lists fail part-way
	listBroken atomic.Bool  // every List fails
	statFails  atomic.Int32 // the next n Stats fail
	tryLocks   atomic.Int32 // TryLock calls
	lockBusy   atomic.Bool  // TryLock reports the lock held (Lock still takes it)
}

func newFaultyStorage(t *testing.T) *faultyStorage {
	return &faultyStorage{FileStorage: &certmagic.FileStorage{Path: t.TempDir()}}
}

var errFault = errors.New("injected storage fault")

// List fails like file_system's walk when a file is renamed away during
// it: part of the keys, and a not-exist error.
func (s *faultyStorage) List(ctx context.Context, prefix string, recursive bool) ([]string, error) {
	keys, err := s.FileStorage.List(ctx, prefix, recursive)
	if s.listBroken.Load() {
		return nil, errFault
	}
	if s.listFails.Add(-1) >= 0 && err == nil {
		return keys[:len(keys)/2], &fs.PathError{Op: "lstat", Path: prefix + "/123456", Err: fs.ErrNotExist}
	}
	return keys, err
}

func (s *faultyStorage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	if s.statFails.Add(-1) >= 0 {
		return certmagic.KeyInfo{}, errFault
	}
	return s.FileStorage.Stat(ctx, key)
}

func (s *faultyStorage) TryLock(ctx context.Context, name string) (bool, error) {
	s.tryLocks.Add(1)
	if s.lockBusy.Load() {
		return false, nil
	}
	return s.FileStorage.TryLock(ctx, name)
}

func storeN(t *testing.T, st certmagic.Storage, prefix string, n int) []string {
	t.Helper()
	var keys []string
	for i := range n {
		k := fmt.Sprintf("%s/k%03d", prefix, i)
		if err := st.Store(context.Background(), k, []byte("x")); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	return keys
}

// A listing that failed part-way is tried again, and is an error if it
// keeps failing: never a shorter list. A prefix with nothing under it is
// empty.
func TestListKeys(t *testing.T) {
	ctx := context.Background()
	st := newFaultyStorage(t)
	want := storeN(t, st, "p", 10)

	st.listFails.Store(storageTries - 1)
	got, err := listKeys(ctx, st, "p")
	slices.Sort(got)
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("after %d partial listings: %v, %v; want all %d keys", storageTries-1, got, err, len(want))
	}
	st.listFails.Store(storageTries)
	if got, err := listKeys(ctx, st, "p"); err == nil || got != nil {
		t.Fatalf("a listing that kept failing: %v, %v; want an error", got, err)
	}
	st.listBroken.Store(true)
	if _, err := listKeys(ctx, st, "p"); !errors.Is(err, errFault) {
		t.Fatalf("a broken listing: %v", err)
	}
	st.listBroken.Store(false)
	if got, err := listKeys(ctx, st, "absent"); err != nil || len(got) != 0 {
		t.Fatalf("an absent prefix: %v, %v; want empty", got, err)
	}

	// file_system itself is read in one go: its temporary files are
	// listed (and not taken for items by the queue), nothing fails.
	fsys := &certmagic.FileStorage{Path: t.TempDir()}
	want = storeN(t, fsys, "p", 3)
	if err := os.WriteFile(filepath.Join(fsys.Path, "p", "1234567"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err = listKeys(ctx, fsys, "p")
	if err != nil || len(got) != 4 || !slices.Contains(got, "p/1234567") || !slices.Contains(got, want[2]) {
		t.Fatalf("file_system listing: %v, %v", got, err)
	}
	if got, err := listKeys(ctx, fsys, "absent"); err != nil || len(got) != 0 {
		t.Fatalf("file_system, absent prefix: %v, %v", got, err)
	}
}

// The queue's views and the worker's scan never read a failed listing as
// an empty queue.
func TestQueueListingFailures(t *testing.T) {
	ctx := context.Background()
	st := newFaultyStorage(t)
	q := newQueue(st, zap.NewNop())
	for i := range 6 {
		mustEnqueue(t, q, testItem(i, fmt.Sprint("r", i)), 100)
	}
	st.listFails.Store(2)
	if v, err := q.view(ctx); err != nil || len(v) != 6 {
		t.Fatalf("view with two partial listings: %d items, %v; want 6", len(v), err)
	}
	st.listBroken.Store(true)
	if v, err := q.view(ctx); err == nil {
		t.Fatalf("view of a broken listing: %v, want an error", v)
	}
	a := &App{logger: zap.NewNop(), journal: newJournal(10), queue: q}
	w := newWorker(a, q, zap.NewNop())
	if err := w.refresh(ctx); err == nil {
		t.Fatal("a scan of a broken listing succeeded")
	}
	st.listBroken.Store(false)
	if err := w.refresh(ctx); err != nil || w.pending.Load() != 6 {
		t.Fatalf("scan: %v, %d pending; want 6", err, w.pending.Load())
	}
	st.listBroken.Store(true)
	if err := w.refresh(ctx); err == nil || w.pending.Load() != 6 {
		t.Fatalf("a failed scan changed the count: %v, %d pending", err, w.pending.Load())
	}
}

// held tries a failed read again, and reports an error rather than "not
// held" when the storage keeps failing.
func TestQueueHeldStorageErrors(t *testing.T) {
	ctx := context.Background()
	st := newFaultyStorage(t)
	q := newQueue(st, zap.NewNop())
	mustEnqueue(t, q, testItem(1, "r1"), 10)
	st.statFails.Store(storageTries - 1)
	if held, err := q.held(ctx, "r1"); err != nil || !held {
		t.Fatalf("held after %d failed reads: %v, %v", storageTries-1, held, err)
	}
	st.statFails.Store(storageTries)
	if held, err := q.held(ctx, "r2"); err == nil || held {
		t.Fatalf("held when every read fails: %v, %v; want an error", held, err)
	}
}

// max_items is exact on one gateway, whatever the concurrency.
func TestQueueMaxItemsConcurrent(t *testing.T) {
	q, _ := testQueue(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	var stored, full atomic.Int32
	for i := range 60 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := q.enqueue(ctx, testItem(i, fmt.Sprint("r", i)), 10, queueT0, nil)
			switch {
			case err == nil:
				stored.Add(1)
			case errors.Is(err, errQueueFull):
				full.Add(1)
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	ids, err := q.ids(ctx)
	if err != nil || len(ids) != 10 || stored.Load() != 10 || full.Load() != 50 {
		t.Fatalf("60 concurrent enqueues at max_items 10: %d stored (%d listed, %v), %d refused", stored.Load(), len(ids), err, full.Load())
	}
}

// A resend of a dead delivery makes it pending again, back in its line by
// arrival; one delivered live removes it.
func TestQueueDeadResend(t *testing.T) {
	q, _ := testQueue(t)
	ctx := context.Background()
	d1, d2 := testItem(1, "ret"), testItem(2, "ret")
	mustEnqueue(t, q, d1, 10)
	mustEnqueue(t, q, d2, 10)
	d1.Status, d1.NextAttemptAt, d1.Attempts = ItemDead, nil, 3
	if err := q.storeItem(ctx, d1); err != nil {
		t.Fatal(err)
	}
	if err := q.leaveLine(ctx, "ret", d1.ID); err != nil {
		t.Fatal(err)
	}
	if dead, err := q.isDead(ctx, d1.ID); err != nil || !dead {
		t.Fatalf("isDead: %v, %v", dead, err)
	}
	now := queueT0.Add(3 * time.Hour)
	again := *d1
	what, err := q.enqueue(ctx, &again, 10, now, func(it *queueItem) { it.Attempts++; it.NextAttemptAt = &now })
	if err != nil || what != enqueuedRevived {
		t.Fatalf("enqueue of a dead id: %v, %v", what, err)
	}
	it, err := q.loadItem(ctx, d1.ID)
	if err != nil || it.Status != ItemPending || it.Attempts != 4 || !it.deadline().Equal(now.Add(time.Hour)) {
		t.Fatalf("revived item: %+v, %v", it, err)
	}
	if got := lineOf(t, q, "ret"); fmt.Sprint(got) != fmt.Sprint([]string{d1.ID, d2.ID}) {
		t.Fatalf("line after the resend = %v, want d1 d2", got)
	}
	// Pending: not resolved by a live delivery.
	if ok, err := q.resolve(ctx, d1.ID); err != nil || ok {
		t.Fatalf("resolve of a pending item: %v, %v", ok, err)
	}
	it.Status = ItemDead
	if err := q.storeItem(ctx, it); err != nil {
		t.Fatal(err)
	}
	if ok, err := q.resolve(ctx, d1.ID); err != nil || !ok {
		t.Fatalf("resolve of a dead item: %v, %v", ok, err)
	}
	if _, err := q.loadItem(ctx, d1.ID); !errors.Is(err, errItemNotFound) {
		t.Fatalf("a resolved item is still stored: %v", err)
	}
}

// countingLocks counts callers inside the storage's Lock at once.
type countingLocks struct {
	*certmagic.FileStorage
	waiting, most atomic.Int32
}

func (s *countingLocks) Lock(ctx context.Context, name string) error {
	n := s.waiting.Add(1)
	defer s.waiting.Add(-1)
	for {
		m := s.most.Load()
		if n <= m || s.most.CompareAndSwap(m, n) {
			break
		}
	}
	return s.FileStorage.Lock(ctx, name)
}

// Holders of one storage lock in one process wait for each other in
// memory: the storage (file_system polls a held lock every second) only
// ever sees one of them asking.
func TestLocalLocks(t *testing.T) {
	st := &countingLocks{FileStorage: &certmagic.FileStorage{Path: t.TempDir()}}
	ctx := context.Background()
	var inside, most atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := withStorageLock(ctx, st, 10*time.Second, "k/x", zap.NewNop(), func(context.Context) error {
				n := inside.Add(1)
				if n > most.Load() {
					most.Store(n)
				}
				time.Sleep(5 * time.Millisecond)
				inside.Add(-1)
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if most.Load() != 1 || st.most.Load() != 1 {
		t.Fatalf("%d holders at once, %d asking the storage at once; want 1 and 1", most.Load(), st.most.Load())
	}
	if unlock, ok, err := tryLockStorage(ctx, st, "k/x"); err != nil || !ok {
		t.Fatalf("tryLock of a free lock: %v, %v", ok, err)
	} else {
		if _, ok2, _ := tryLockStorage(ctx, st, "k/x"); ok2 {
			t.Fatal("tryLock of a held lock succeeded")
		}
		unlock(ctx, zap.NewNop())
	}
	if len(localLocks.m) != 0 {
		t.Errorf("local locks left: %v", localLocks.m)
	}
}

// hangingStorage answers nothing until released, ignoring its context, as
// a client waiting on a frozen server can.
type hangingStorage struct {
	*certmagic.FileStorage
	release  chan struct{}
	unlocked atomic.Int32
}

func (s *hangingStorage) Load(ctx context.Context, key string) ([]byte, error) {
	<-s.release
	return s.FileStorage.Load(ctx, key)
}

func (s *hangingStorage) Lock(ctx context.Context, name string) error {
	<-s.release
	return nil // taken, late
}

func (s *hangingStorage) Unlock(ctx context.Context, name string) error {
	s.unlocked.Add(1)
	return nil
}

// A storage call that does not answer is given up on in bounded time; a
// lock taken after its caller gave up is released.
func TestBoundedStorage(t *testing.T) {
	hs := &hangingStorage{FileStorage: &certmagic.FileStorage{Path: t.TempDir()}, release: make(chan struct{})}
	st := bounded(hs).(*boundedTryStorage).boundedStorage
	st.timeout = 50 * time.Millisecond
	if _, err := st.Load(context.Background(), "k"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Load of a hanging storage: %v, want a deadline error", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := st.Lock(ctx, "n"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock of a hanging storage: %v, want a deadline error", err)
	}
	close(hs.release)
	deadline := time.Now().Add(5 * time.Second)
	for hs.unlocked.Load() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the lock taken after its caller gave up was not released")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if fsys := (&certmagic.FileStorage{Path: t.TempDir()}); bounded(fsys) != certmagic.Storage(fsys) {
		t.Fatal("file_system is wrapped")
	}
}
