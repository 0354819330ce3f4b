package rereadyverify

import (
	"context"
	"encoding/binary"
	"errors"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

// replayT0 is a fixed start for injected clocks.
var replayT0 = time.Unix(1744831201, 0)

func testKey(i int) replayKey {
	k := replayKey{t: replayT0.Unix()}
	binary.LittleEndian.PutUint64(k.h[:], uint64(i))
	return k
}

// mustBegin calls Begin and checks the state it returns.
func mustBegin(t *testing.T, s replayStore, k replayKey, now time.Time, want replayState) replayClaim {
	t.Helper()
	st, c, err := s.Begin(context.Background(), k, now)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	if st != want {
		t.Fatalf("Begin = %v, want %v", st, want)
	}
	if (st == replayNew) != (c.id != 0) {
		t.Fatalf("Begin = %v with claim id %d", st, c.id)
	}
	return c
}

func TestReplayMemoryLifecycle(t *testing.T) {
	const ttl = 10 * time.Minute
	ctx := context.Background()
	tests := []struct {
		name string
		run  func(t *testing.T, m *memoryReplay)
	}{
		{"repeat in flight is refused, repeat after commit is delivered", func(t *testing.T, m *memoryReplay) {
			c := mustBegin(t, m, testKey(1), replayT0, replayNew)
			mustBegin(t, m, testKey(1), replayT0.Add(time.Second), replayInFlight)
			mustBegin(t, m, testKey(2), replayT0, replayNew) // other keys unaffected
			m.Commit(ctx, c, replayT0.Add(2*time.Second), ttl)
			mustBegin(t, m, testKey(1), replayT0.Add(3*time.Second), replayDelivered)
		}},
		{"same digest under another t is another delivery", func(t *testing.T, m *memoryReplay) {
			k := testKey(1)
			c := mustBegin(t, m, k, replayT0, replayNew)
			m.Commit(ctx, c, replayT0, ttl)
			k.t++
			mustBegin(t, m, k, replayT0, replayNew)
		}},
		{"delivery is forgotten after ttl", func(t *testing.T, m *memoryReplay) {
			c := mustBegin(t, m, testKey(1), replayT0, replayNew)
			m.Commit(ctx, c, replayT0, ttl)
			mustBegin(t, m, testKey(1), replayT0.Add(ttl-time.Nanosecond), replayDelivered)
			mustBegin(t, m, testKey(1), replayT0.Add(ttl), replayNew)
		}},
		{"abort lets a retry through", func(t *testing.T, m *memoryReplay) {
			c := mustBegin(t, m, testKey(1), replayT0, replayNew)
			m.Abort(ctx, c)
			c = mustBegin(t, m, testKey(1), replayT0.Add(time.Second), replayNew)
			m.Commit(ctx, c, replayT0.Add(2*time.Second), ttl)
			mustBegin(t, m, testKey(1), replayT0.Add(3*time.Second), replayDelivered)
			if st := m.stats(); st.Entries != 1 || st.InFlight != 0 {
				t.Fatalf("stats = %+v, want 1 entry, none in flight", st)
			}
		}},
		{"commit with ttl 0 is an abort", func(t *testing.T, m *memoryReplay) {
			c := mustBegin(t, m, testKey(1), replayT0, replayNew)
			m.Commit(ctx, c, replayT0, 0)
			mustBegin(t, m, testKey(1), replayT0, replayNew)
		}},
		{"claim lease runs out: a repeat takes over; the old claim cannot abort it", func(t *testing.T, m *memoryReplay) {
			old := mustBegin(t, m, testKey(1), replayT0, replayNew)
			mustBegin(t, m, testKey(1), replayT0.Add(DefaultReplayLease-time.Nanosecond), replayInFlight)
			cur := mustBegin(t, m, testKey(1), replayT0.Add(DefaultReplayLease), replayNew)
			if cur.id == old.id {
				t.Fatal("takeover reused the claim id")
			}
			m.Abort(ctx, old)
			mustBegin(t, m, testKey(1), replayT0.Add(DefaultReplayLease+time.Second), replayInFlight)
			m.Abort(ctx, cur)
			mustBegin(t, m, testKey(1), replayT0.Add(DefaultReplayLease+time.Second), replayNew)
		}},
		{"commit after the lease ran out still records the delivery", func(t *testing.T, m *memoryReplay) {
			old := mustBegin(t, m, testKey(1), replayT0, replayNew)
			// Another key's Begin drops the expired claim from the list.
			late := replayT0.Add(2 * DefaultReplayLease)
			mustBegin(t, m, testKey(2), late, replayNew)
			if st := m.stats(); st.Entries != 1 {
				t.Fatalf("expired claim not dropped: %+v", st)
			}
			m.Commit(ctx, old, late, ttl)
			mustBegin(t, m, testKey(1), late.Add(time.Second), replayDelivered)
		}},
		{"commit by a taken-over claim records the delivery; the new claim's abort keeps it", func(t *testing.T, m *memoryReplay) {
			old := mustBegin(t, m, testKey(1), replayT0, replayNew)
			cur := mustBegin(t, m, testKey(1), replayT0.Add(DefaultReplayLease), replayNew)
			m.Commit(ctx, old, replayT0.Add(DefaultReplayLease+time.Second), ttl)
			m.Abort(ctx, cur)
			mustBegin(t, m, testKey(1), replayT0.Add(DefaultReplayLease+2*time.Second), replayDelivered)
		}},
		{"expired entries are dropped as time passes", func(t *testing.T, m *memoryReplay) {
			for i := range 100 {
				c := mustBegin(t, m, testKey(i), replayT0, replayNew)
				m.Commit(ctx, c, replayT0, ttl)
			}
			later := replayT0.Add(ttl)
			for i := range 10 {
				mustBegin(t, m, testKey(1000+i), later, replayNew)
			}
			if st := m.stats(); st.Entries != 10 {
				t.Fatalf("entries = %d, want 10 (the live claims)", st.Entries)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(t, newMemoryReplay(0, 0))
		})
	}
}

func TestReplayMemoryCapEvictsOldest(t *testing.T) {
	ctx := context.Background()
	m := newMemoryReplay(3, 0)
	now := replayT0
	for i := 1; i <= 3; i++ {
		c := mustBegin(t, m, testKey(i), now, replayNew)
		m.Commit(ctx, c, now, time.Hour)
		now = now.Add(time.Second)
	}
	c := mustBegin(t, m, testKey(4), now, replayNew)
	st := m.stats()
	if st.Entries != 3 || st.Evictions != 1 {
		t.Fatalf("stats = %+v, want 3 entries, 1 eviction", st)
	}
	m.Commit(ctx, c, now, time.Hour)
	mustBegin(t, m, testKey(2), now, replayDelivered)
	mustBegin(t, m, testKey(3), now, replayDelivered)
	mustBegin(t, m, testKey(4), now, replayDelivered)
	mustBegin(t, m, testKey(1), now, replayNew) // the oldest went; this evicts key 2
	mustBegin(t, m, testKey(2), now, replayNew)
}

func TestReplayMemoryCapKeepsInFlight(t *testing.T) {
	ctx := context.Background()
	m := newMemoryReplay(2, 0)
	a := mustBegin(t, m, testKey(1), replayT0, replayNew)
	mustBegin(t, m, testKey(2), replayT0, replayNew)
	// Full of claims: a genuine request is still admitted, over capacity.
	mustBegin(t, m, testKey(3), replayT0, replayNew)
	if st := m.stats(); st.Entries != 3 || st.InFlight != 3 || st.Evictions != 0 {
		t.Fatalf("stats = %+v, want 3 claims, no eviction", st)
	}
	for i := 1; i <= 3; i++ {
		mustBegin(t, m, testKey(i), replayT0, replayInFlight)
	}
	// Once deliveries exist they go first, not claims.
	m.Commit(ctx, a, replayT0, time.Hour)
	mustBegin(t, m, testKey(4), replayT0, replayNew)
	if st := m.stats(); st.Entries != 3 || st.Evictions != 1 {
		t.Fatalf("stats = %+v, want 3 entries, 1 eviction", st)
	}
	mustBegin(t, m, testKey(2), replayT0, replayInFlight)
	mustBegin(t, m, testKey(3), replayT0, replayInFlight)
}

func TestReplayMemoryShrink(t *testing.T) {
	ctx := context.Background()
	m := newMemoryReplay(10, 0)
	for i := range 10 {
		c := mustBegin(t, m, testKey(i), replayT0, replayNew)
		m.Commit(ctx, c, replayT0, time.Hour)
	}
	m.configure(4, 0, nil)
	if st := m.stats(); st.Entries != 4 || st.Evictions != 6 {
		t.Fatalf("stats = %+v, want 4 entries, 6 evictions", st)
	}
	mustBegin(t, m, testKey(9), replayT0, replayDelivered)
	mustBegin(t, m, testKey(0), replayT0, replayNew)
}

// TestReplayMemoryFlood floods the store with distinct deliveries, 10 times
// its capacity: it stays at capacity, keeps the newest, and its slab stops
// growing once full.
func TestReplayMemoryFlood(t *testing.T) {
	const capacity = 10_000
	ctx := context.Background()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	m := newMemoryReplay(capacity, 0)
	now := replayT0
	var atCap replayStats
	for i := range 10 * capacity {
		c := mustBegin(t, m, testKey(i), now, replayNew)
		m.Commit(ctx, c, now, 10*time.Minute)
		if i == capacity-1 {
			atCap = m.stats()
		}
	}
	st := m.stats()
	if st.Entries != capacity || st.InFlight != 0 || st.Evictions != 9*capacity {
		t.Fatalf("stats = %+v, want %d entries, %d evictions", st, capacity, 9*capacity)
	}
	if st.Slots != atCap.Slots || st.Slots > capacity+1 {
		t.Fatalf("slab grew past capacity %d: %d slots at capacity, %d after the flood", capacity, atCap.Slots, st.Slots)
	}
	mustBegin(t, m, testKey(10*capacity-1), now, replayDelivered)
	mustBegin(t, m, testKey(9*capacity), now, replayDelivered)
	mustBegin(t, m, testKey(9*capacity-1), now, replayNew)
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(m)
	heap := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("at capacity: %d entries, heap %d bytes (%d per entry)", st.Entries, heap, heap/int64(st.Entries))
}

// testConcurrentBegin has n goroutines Begin one key at once, spread over
// stores: exactly one must get replayNew.
func testConcurrentBegin(t *testing.T, n int, stores ...replayStore) {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		count = map[replayState]int{}
		start = make(chan struct{})
	)
	for i := range n {
		s := stores[i%len(stores)]
		wg.Go(func() {
			<-start
			st, _, err := s.Begin(context.Background(), testKey(7), replayT0)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			count[st]++
			mu.Unlock()
		})
	}
	close(start)
	wg.Wait()
	if count[replayNew] != 1 || count[replayInFlight] != n-1 {
		t.Fatalf("states = %v, want 1 new and %d in flight", count, n-1)
	}
}

func TestReplayMemoryConcurrentBegin(t *testing.T) {
	testConcurrentBegin(t, 256, newMemoryReplay(0, 0))
}

func TestReplayMemoryConcurrentDistinct(t *testing.T) {
	ctx := context.Background()
	m := newMemoryReplay(1000, 0)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				k := testKey(g*1_000_000 + i)
				st, c, _ := m.Begin(ctx, k, replayT0)
				if st != replayNew {
					t.Errorf("Begin(distinct) = %v", st)
					return
				}
				if i%3 == 0 {
					m.Abort(ctx, c)
				} else {
					m.Commit(ctx, c, replayT0, time.Hour)
				}
			}
		})
	}
	wg.Wait()
	if st := m.stats(); st.Entries > 1000 || st.InFlight != 0 {
		t.Fatalf("stats = %+v, want at most 1000 entries, none in flight", st)
	}
}

// TestReplayMemoryUsagePool checks the store survives a config reload: the
// new config loads it before the old one releases it.
func TestReplayMemoryUsagePool(t *testing.T) {
	ctx := context.Background()
	a, releaseA := loadMemoryReplay(100, 0, nil)
	b, releaseB := loadMemoryReplay(200, 0, nil) // the reloaded config
	if a != b {
		t.Fatal("two loads returned different stores")
	}
	if sharedMemoryReplay.Load() != a {
		t.Fatal("the shared store is not published for metrics")
	}
	if st := b.stats(); st.Entries != 0 {
		t.Fatalf("a fresh store holds %d entries", st.Entries)
	}
	c := mustBegin(t, a, testKey(1), replayT0, replayNew)
	a.Commit(ctx, c, replayT0, time.Hour)

	if err := releaseA(); err != nil { // the old config's Cleanup
		t.Fatal(err)
	}
	if err := releaseA(); err != nil { // a second call does nothing
		t.Fatal(err)
	}
	mustBegin(t, b, testKey(1), replayT0, replayDelivered)
	if b.capacity != 200 {
		t.Fatalf("capacity = %d, want the last config's 200", b.capacity)
	}

	if err := releaseB(); err != nil {
		t.Fatal(err)
	}
	if sharedMemoryReplay.Load() != nil {
		t.Fatal("the destroyed store is still published")
	}
	d, releaseD := loadMemoryReplay(0, 0, nil)
	defer releaseD()
	if d == a {
		t.Fatal("the store outlived its last user")
	}
	mustBegin(t, d, testKey(1), replayT0, replayNew)
}

// ---------------------------------------------------------------------------
// Storage

type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

func newTestStorageReplay(t *testing.T, st certmagic.Storage, clock *testClock) *storageReplay {
	t.Helper()
	s := newStorageReplay(st, storageReplayConfig{SweepInterval: -1, Now: clock.now})
	t.Cleanup(func() { s.Close() })
	return s
}

func TestReplayStorageLifecycle(t *testing.T) {
	const ttl = 10 * time.Minute
	ctx := context.Background()
	clock := &testClock{t: replayT0}
	s := newTestStorageReplay(t, &certmagic.FileStorage{Path: t.TempDir()}, clock)

	c := mustBegin(t, s, testKey(1), replayT0, replayNew)
	mustBegin(t, s, testKey(1), replayT0.Add(time.Second), replayInFlight)
	if err := s.Commit(ctx, c, replayT0.Add(time.Second), ttl); err != nil {
		t.Fatal(err)
	}
	mustBegin(t, s, testKey(1), replayT0.Add(2*time.Second), replayDelivered)
	mustBegin(t, s, testKey(1), replayT0.Add(time.Second+ttl), replayNew)

	c = mustBegin(t, s, testKey(2), replayT0, replayNew)
	if err := s.Abort(ctx, c); err != nil {
		t.Fatal(err)
	}
	c = mustBegin(t, s, testKey(2), replayT0, replayNew)
	if err := s.Commit(ctx, c, replayT0, 0); err != nil { // ttl 0: abort
		t.Fatal(err)
	}
	mustBegin(t, s, testKey(2), replayT0, replayNew)
}

// twoGateways returns two stores over one file_system root, as two
// gateways sharing storage would have.
func twoGateways(t *testing.T) (a, b *storageReplay) {
	root := t.TempDir()
	clock := &testClock{t: replayT0}
	return newTestStorageReplay(t, &certmagic.FileStorage{Path: root}, clock),
		newTestStorageReplay(t, &certmagic.FileStorage{Path: root}, clock)
}

// TestReplayStorageShared runs two stores over one root, as two gateways
// sharing storage would.
func TestReplayStorageShared(t *testing.T) {
	ctx := context.Background()
	a, b := twoGateways(t)

	c := mustBegin(t, a, testKey(1), replayT0, replayNew)
	mustBegin(t, b, testKey(1), replayT0, replayInFlight)
	if err := a.Commit(ctx, c, replayT0, time.Hour); err != nil {
		t.Fatal(err)
	}
	mustBegin(t, b, testKey(1), replayT0.Add(time.Second), replayDelivered)

	// A claim aborted through one is free on the other.
	c = mustBegin(t, b, testKey(2), replayT0, replayNew)
	mustBegin(t, a, testKey(2), replayT0, replayInFlight)
	if err := b.Abort(ctx, c); err != nil {
		t.Fatal(err)
	}
	mustBegin(t, a, testKey(2), replayT0, replayNew)
}

// TestReplayStorageCrashedClaim: a gateway claims a delivery and never
// finishes; after the lease another takes it over, and the first one's
// late Abort does not undo that.
func TestReplayStorageCrashedClaim(t *testing.T) {
	ctx := context.Background()
	a, b := twoGateways(t)

	old := mustBegin(t, a, testKey(1), replayT0, replayNew)
	mustBegin(t, b, testKey(1), replayT0.Add(DefaultReplayLease-time.Second), replayInFlight)
	cur := mustBegin(t, b, testKey(1), replayT0.Add(DefaultReplayLease), replayNew)
	if err := a.Abort(ctx, old); err != nil {
		t.Fatal(err)
	}
	mustBegin(t, a, testKey(1), replayT0.Add(DefaultReplayLease), replayInFlight)
	// The first forward did succeed after all: its Commit is kept, and the
	// second claim's Abort does not remove it.
	if err := a.Commit(ctx, old, replayT0.Add(DefaultReplayLease), time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := b.Abort(ctx, cur); err != nil {
		t.Fatal(err)
	}
	mustBegin(t, b, testKey(1), replayT0.Add(DefaultReplayLease+time.Second), replayDelivered)
}

// A gateway whose forward is slow renews its claim: a peer still sees the
// delivery in flight after the first lease; a stale claim is not renewed.
func TestReplayStorageRenew(t *testing.T) {
	ctx := context.Background()
	a, b := twoGateways(t)

	c := mustBegin(t, a, testKey(1), replayT0, replayNew)
	if err := a.Renew(ctx, c, replayT0.Add(DefaultReplayLease/2)); err != nil {
		t.Fatal(err)
	}
	mustBegin(t, b, testKey(1), replayT0.Add(DefaultReplayLease+time.Second), replayInFlight)
	// Lapsed and taken over: the old claim's renewal must not revive it.
	later := replayT0.Add(2 * DefaultReplayLease)
	cur := mustBegin(t, b, testKey(1), later, replayNew)
	if err := a.Renew(ctx, c, later); err != nil {
		t.Fatal(err)
	}
	if err := b.Abort(ctx, cur); err != nil {
		t.Fatal(err)
	}
	mustBegin(t, a, testKey(1), later.Add(time.Second), replayNew)
}

func TestReplayStorageDamagedRecord(t *testing.T) {
	ctx := context.Background()
	st := &certmagic.FileStorage{Path: t.TempDir()}
	s := newTestStorageReplay(t, st, &testClock{t: replayT0})
	if err := st.Store(ctx, s.key(testKey(1)), []byte("not json")); err != nil {
		t.Fatal(err)
	}
	mustBegin(t, s, testKey(1), replayT0, replayNew)
	mustBegin(t, s, testKey(1), replayT0, replayInFlight)
}

func TestReplayStorageConcurrentBegin(t *testing.T) {
	a, b := twoGateways(t)
	testConcurrentBegin(t, 4, a, b)
}

// failingStorage fails Load and Store while broken is set.
type failingStorage struct {
	*certmagic.FileStorage
	mu     sync.Mutex
	broken bool
}

var errStorageDown = errors.New("storage down")

func (f *failingStorage) setBroken(b bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.broken = b
}

func (f *failingStorage) isBroken() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.broken
}

func (f *failingStorage) Load(ctx context.Context, key string) ([]byte, error) {
	if f.isBroken() {
		return nil, errStorageDown
	}
	return f.FileStorage.Load(ctx, key)
}

func (f *failingStorage) Store(ctx context.Context, key string, v []byte) error {
	if f.isBroken() {
		return errStorageDown
	}
	return f.FileStorage.Store(ctx, key, v)
}

func TestReplayStorageErrors(t *testing.T) {
	ctx := context.Background()
	fst := &failingStorage{FileStorage: &certmagic.FileStorage{Path: t.TempDir()}}
	s := newTestStorageReplay(t, fst, &testClock{t: replayT0})
	c := mustBegin(t, s, testKey(1), replayT0, replayNew)

	fst.setBroken(true)
	if _, _, err := s.Begin(ctx, testKey(2), replayT0); !errors.Is(err, errStorageDown) {
		t.Fatalf("Begin error = %v, want %v", err, errStorageDown)
	}
	if err := s.Commit(ctx, c, replayT0, time.Hour); !errors.Is(err, errStorageDown) {
		t.Fatalf("Commit error = %v, want %v", err, errStorageDown)
	}
	if err := s.Abort(ctx, c); !errors.Is(err, errStorageDown) {
		t.Fatalf("Abort error = %v, want %v", err, errStorageDown)
	}

	// A cancelled request context bounds Begin's lock wait.
	fst.setBroken(false)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, err := s.Begin(cctx, testKey(3), replayT0); !errors.Is(err, context.Canceled) {
		t.Fatalf("Begin with a cancelled context: error = %v", err)
	}
	// Commit ignores cancellation: the delivery happened.
	if err := s.Commit(cctx, c, replayT0, time.Hour); err != nil {
		t.Fatalf("Commit with a cancelled context: %v", err)
	}
	mustBegin(t, s, testKey(1), replayT0, replayDelivered)
}

func TestReplayStorageSweep(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	st := &certmagic.FileStorage{Path: root}
	clock := &testClock{t: replayT0}
	s := newTestStorageReplay(t, st, clock)

	// 1: delivered, expires at +10m; 2: delivered, expires at +1h;
	// 3: a claim, lease ends at +1m; 4: a claim made at +30m; 5: damaged.
	c := mustBegin(t, s, testKey(1), replayT0, replayNew)
	s.Commit(ctx, c, replayT0, 10*time.Minute)
	c = mustBegin(t, s, testKey(2), replayT0, replayNew)
	s.Commit(ctx, c, replayT0, time.Hour)
	mustBegin(t, s, testKey(3), replayT0, replayNew)
	mustBegin(t, s, testKey(4), replayT0.Add(30*time.Minute), replayNew)
	if err := st.Store(ctx, s.key(testKey(5)), []byte("{")); err != nil {
		t.Fatal(err)
	}

	clock.set(replayT0.Add(30 * time.Minute))
	n, err := s.sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Fatalf("swept %d records, want 3", n)
	}
	keys, err := st.List(ctx, replayStoragePrefix, true)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{s.key(testKey(2)): true, s.key(testKey(4)): true}
	if len(keys) != len(want) {
		t.Fatalf("left %v, want %v", keys, want)
	}
	for _, k := range keys {
		if !want[k] {
			t.Fatalf("left %v, want %v", keys, want)
		}
	}

	// Only one of two gateways sweeps within an interval.
	other := newTestStorageReplay(t, st, clock)
	s.interval, other.interval = time.Hour, time.Hour
	if !s.claimSweep(ctx) {
		t.Fatal("first sweep claim refused")
	}
	if other.claimSweep(ctx) {
		t.Fatal("second gateway swept within the interval")
	}
	clock.set(replayT0.Add(2 * time.Hour))
	if !other.claimSweep(ctx) {
		t.Fatal("sweep claim refused after the interval")
	}

	// An empty storage sweeps cleanly.
	empty := newTestStorageReplay(t, &certmagic.FileStorage{Path: t.TempDir()}, clock)
	if n, err := empty.sweep(ctx); n != 0 || err != nil {
		t.Fatalf("sweep of empty storage = %d, %v", n, err)
	}
}

// TestReplayStorageBackgroundSweep checks the sweep runs on its own and
// that Close stops it.
func TestReplayStorageBackgroundSweep(t *testing.T) {
	ctx := context.Background()
	st := &certmagic.FileStorage{Path: t.TempDir()}
	clock := &testClock{t: replayT0}
	s := newStorageReplay(st, storageReplayConfig{SweepInterval: 20 * time.Millisecond, Now: clock.now})
	s.startSweep()
	c := mustBegin(t, s, testKey(1), replayT0, replayNew)
	s.Commit(ctx, c, replayT0, time.Minute)
	clock.set(replayT0.Add(time.Hour))
	deadline := time.Now().Add(5 * time.Second)
	for st.Exists(ctx, s.key(testKey(1))) {
		if time.Now().After(deadline) {
			t.Fatal("the background sweep did not remove an expired record")
		}
		time.Sleep(10 * time.Millisecond)
	}
	done := make(chan error)
	go func() { done <- s.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return")
	}
	if err := s.Close(); err != nil { // a second Close is harmless
		t.Fatal(err)
	}
}

// ---------------------------------------------------------------------------
// Benchmarks

// BenchmarkReplayMemoryBeginCommit is the memory store's cost per verified
// request: Begin and Commit of a distinct key, at capacity (every new
// delivery evicts the oldest). The cost does not grow with the capacity
// beyond cache effects.
func BenchmarkReplayMemoryBeginCommit(b *testing.B) {
	for _, capacity := range []int{1_000, DefaultReplayCapacity, 1_000_000} {
		b.Run("cap="+strconv.Itoa(capacity), func(b *testing.B) {
			ctx := context.Background()
			m := newMemoryReplay(capacity, 0)
			for i := range capacity { // start full
				_, c, _ := m.Begin(ctx, testKey(-1-i), replayT0)
				m.Commit(ctx, c, replayT0, time.Hour)
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				_, c, _ := m.Begin(ctx, testKey(i), replayT0)
				m.Commit(ctx, c, replayT0, time.Hour)
				i++
			}
		})
	}
}

func BenchmarkReplayMemoryBeginCommitParallel(b *testing.B) {
	ctx := context.Background()
	m := newMemoryReplay(0, 0)
	var mu sync.Mutex
	next := 0
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		mu.Lock()
		base := next << 40
		next++
		mu.Unlock()
		i := 0
		for pb.Next() {
			_, c, _ := m.Begin(ctx, testKey(base+i), replayT0)
			m.Commit(ctx, c, replayT0, time.Hour)
			i++
		}
	})
}

// BenchmarkReplayMemoryFlood floods a default-capacity store with 3 times
// its capacity of distinct deliveries and reports what it holds at the cap:
// entries, evictions and the heap it retains (measured after GC).
func BenchmarkReplayMemoryFlood(b *testing.B) {
	ctx := context.Background()
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		m := newMemoryReplay(DefaultReplayCapacity, 0)
		now := replayT0
		for i := range 3 * DefaultReplayCapacity {
			_, c, _ := m.Begin(ctx, testKey(i), now)
			m.Commit(ctx, c, now, 10*time.Minute)
			now = now.Add(time.Millisecond)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		st := m.stats()
		runtime.KeepAlive(m)
		heap := float64(after.HeapAlloc) - float64(before.HeapAlloc)
		b.ReportMetric(float64(st.Entries), "entries")
		b.ReportMetric(float64(st.Evictions), "evictions")
		b.ReportMetric(heap, "heap-bytes")
		b.ReportMetric(heap/float64(st.Entries), "heap-bytes/entry")
	}
}
