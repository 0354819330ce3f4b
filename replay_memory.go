package rereadyverify

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// The memory replay store: one per process, bounded, kept across config
// reloads.

// memoryReplay is the in-process store. Entries live in a slab threaded by
// two lists: claims in Begin order and deliveries in Commit order, which
// is also expiry order while the lease and ttl stay fixed. Every operation
// is O(1): a map lookup, list splices, and a bounded number of expired
// entries dropped from the list heads. Lookups check expiry themselves, so
// an entry past its time is dead even before it is dropped.
//
// Capacity counts all entries. When a new claim would exceed it, the oldest
// delivery is forgotten early (and counted and logged): a genuine request is
// never refused for want of room. Claims are never evicted, since dropping
// one would let a concurrent repeat through; they are bounded by the
// requests in flight, each of which already holds a goroutine and a body
// buffer. So entries stay at or below max(capacity, requests in flight).
type memoryReplay struct {
	mu        sync.Mutex
	capacity  int
	lease     int64 // nanoseconds
	index     map[memKey]int32
	slots     []replaySlot
	free      int32 // head of the free-slot chain, through next; -1 if none
	claims    replayList
	delivered replayList
	inFlight  int
	nextID    uint64

	evictions  atomic.Uint64
	entries    atomic.Int64 // mirror of len(index) for metrics
	logger     *zap.Logger
	loggedAt   int64 // unix nanoseconds of the last eviction log
	unlogged   uint64
	logEvery   int64
	dropBudget int
}

type replaySlot struct {
	key        memKey
	expires    int64 // unix nanoseconds; a claim's lease end or a delivery's
	id         uint64
	prev, next int32
	state      replayState // replayInFlight or replayDelivered
}

// maxReplayCapacity keeps slot indexes within int32, with room for claims.
const maxReplayCapacity = 1 << 30

// replayList is a doubly linked list of slots; -1 ends it.
type replayList struct{ head, tail int32 }

// newMemoryReplay returns an empty memory store. capacity <= 0 means
// DefaultReplayCapacity, lease <= 0 DefaultReplayLease.
func newMemoryReplay(capacity int, lease time.Duration) *memoryReplay {
	m := &memoryReplay{
		index:      make(map[memKey]int32),
		free:       -1,
		claims:     replayList{-1, -1},
		delivered:  replayList{-1, -1},
		logger:     zap.NewNop(),
		logEvery:   int64(time.Minute),
		dropBudget: 16,
		nextID:     newClaimID() >> 1, // ids differ from a previous store's
	}
	m.configure(capacity, lease, nil)
	return m
}

// configure applies a capacity, lease and logger; zero values keep
// defaults (or the logger). Shrinking the capacity forgets the oldest
// deliveries at once.
func (m *memoryReplay) configure(capacity int, lease time.Duration, logger *zap.Logger) {
	if capacity <= 0 {
		capacity = DefaultReplayCapacity
	}
	capacity = min(capacity, maxReplayCapacity)
	if lease <= 0 {
		lease = DefaultReplayLease
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.capacity, m.lease = capacity, int64(lease)
	if logger != nil {
		m.logger = logger
	}
	n := 0
	for len(m.index) > m.capacity && m.delivered.head >= 0 {
		m.remove(m.delivered.head)
		n++
	}
	if n > 0 {
		m.evictions.Add(uint64(n))
		m.logger.Warn("replay memory shrunk; forgot oldest deliveries early",
			zap.Int("capacity", m.capacity), zap.Int("forgotten", n))
	}
}

// Begin implements replayStore. It never fails.
func (m *memoryReplay) Begin(_ context.Context, k replayKey, now time.Time) (replayState, replayClaim, error) {
	return m.begin(k, now, false)
}

// Reopen implements replayStore. It never fails.
func (m *memoryReplay) Reopen(_ context.Context, k replayKey, now time.Time) (replayState, replayClaim, error) {
	return m.begin(k, now, true)
}

// begin is Begin; with reopen, a delivery is claimed as if unknown.
func (m *memoryReplay) begin(k replayKey, now time.Time, reopen bool) (replayState, replayClaim, error) {
	t := now.UnixNano()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.dropExpired(t)
	mk := k.mem()
	if i, ok := m.index[mk]; ok {
		s := &m.slots[i]
		if s.expires > t && !(reopen && s.state == replayDelivered) {
			return s.state, replayClaim{}, nil
		}
		m.remove(i)
	}
	if len(m.index) >= m.capacity && m.delivered.head >= 0 {
		m.remove(m.delivered.head)
		m.evicted(t)
	}
	m.nextID++
	c := replayClaim{key: k, id: m.nextID}
	i := m.alloc()
	m.slots[i] = replaySlot{key: mk, expires: t + m.lease, id: c.id, state: replayInFlight}
	m.claims.pushBack(m.slots, i)
	m.inFlight++
	m.index[mk] = i
	m.entries.Store(int64(len(m.index)))
	return replayNew, c, nil
}

// Commit implements replayStore. It never fails.
func (m *memoryReplay) Commit(ctx context.Context, c replayClaim, now time.Time, ttl time.Duration) error {
	if ttl <= 0 {
		return m.Abort(ctx, c)
	}
	t := now.UnixNano()
	m.mu.Lock()
	defer m.mu.Unlock()
	mk := c.key.mem()
	if i, ok := m.index[mk]; ok {
		s := &m.slots[i]
		switch {
		case s.state == replayDelivered && s.expires > t:
			return nil // someone else's delivery already covers it
		case s.state == replayInFlight && s.id == c.id:
			// The usual case: turn the claim into a delivery in place.
			m.claims.unlink(m.slots, i)
			m.inFlight--
			s.state, s.expires = replayDelivered, t+int64(ttl)
			m.delivered.pushBack(m.slots, i)
			return nil
		}
		m.remove(i)
	} else if len(m.index) >= m.capacity && m.delivered.head >= 0 {
		m.remove(m.delivered.head)
		m.evicted(t)
	}
	i := m.alloc()
	m.slots[i] = replaySlot{key: mk, expires: t + int64(ttl), id: c.id, state: replayDelivered}
	m.delivered.pushBack(m.slots, i)
	m.index[mk] = i
	m.entries.Store(int64(len(m.index)))
	return nil
}

// Abort implements replayStore. It never fails.
func (m *memoryReplay) Abort(_ context.Context, c replayClaim) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if i, ok := m.index[c.key.mem()]; ok {
		if s := &m.slots[i]; s.state == replayInFlight && s.id == c.id {
			m.remove(i)
		}
	}
	return nil
}

// Destruct empties the store when the last config using it is gone.
func (m *memoryReplay) Destruct() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.index = make(map[memKey]int32)
	m.slots, m.free = nil, -1
	m.claims, m.delivered = replayList{-1, -1}, replayList{-1, -1}
	m.inFlight = 0
	m.entries.Store(0)
	sharedMemoryReplay.CompareAndSwap(m, nil)
	return nil
}

// replayStats is a snapshot for logs and tests.
type replayStats struct {
	Entries   int    // deliveries and claims held
	InFlight  int    // claims held
	Evictions uint64 // deliveries forgotten early to stay within capacity
	Slots     int    // slab slots allocated; never more than the peak entries
}

func (m *memoryReplay) stats() replayStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return replayStats{
		Entries:   len(m.index),
		InFlight:  m.inFlight,
		Evictions: m.evictions.Load(),
		Slots:     len(m.slots),
	}
}

// dropExpired drops a bounded number of expired entries from the list
// heads, so memory is given back without a sweep and Begin stays O(1).
func (m *memoryReplay) dropExpired(t int64) {
	for n := 0; n < m.dropBudget; n++ {
		switch {
		case m.delivered.head >= 0 && m.slots[m.delivered.head].expires <= t:
			m.remove(m.delivered.head)
		case m.claims.head >= 0 && m.slots[m.claims.head].expires <= t:
			m.remove(m.claims.head)
		default:
			return
		}
	}
}

// evicted counts an early eviction and logs at most once per logEvery.
func (m *memoryReplay) evicted(t int64) {
	m.evictions.Add(1)
	m.unlogged++
	if t-m.loggedAt < m.logEvery {
		return
	}
	m.logger.Warn("replay memory full; forgetting oldest deliveries early",
		zap.Int("capacity", m.capacity),
		zap.Uint64("forgotten", m.unlogged),
		zap.Uint64("forgotten_total", m.evictions.Load()))
	m.loggedAt, m.unlogged = t, 0
}

func (m *memoryReplay) alloc() int32 {
	if i := m.free; i >= 0 {
		m.free = m.slots[i].next
		return i
	}
	m.slots = append(m.slots, replaySlot{})
	return int32(len(m.slots) - 1)
}

// remove unlinks slot i, deletes its key and frees it.
func (m *memoryReplay) remove(i int32) {
	s := &m.slots[i]
	if s.state == replayInFlight {
		m.claims.unlink(m.slots, i)
		m.inFlight--
	} else {
		m.delivered.unlink(m.slots, i)
	}
	delete(m.index, s.key)
	*s = replaySlot{next: m.free}
	m.free = i
	m.entries.Store(int64(len(m.index)))
}

func (l *replayList) pushBack(slots []replaySlot, i int32) {
	slots[i].prev, slots[i].next = l.tail, -1
	if l.tail >= 0 {
		slots[l.tail].next = i
	} else {
		l.head = i
	}
	l.tail = i
}

func (l *replayList) unlink(slots []replaySlot, i int32) {
	s := &slots[i]
	if s.prev >= 0 {
		slots[s.prev].next = s.next
	} else {
		l.head = s.next
	}
	if s.next >= 0 {
		slots[s.next].prev = s.prev
	} else {
		l.tail = s.prev
	}
}

// The process keeps one memory store across config reloads. Its pool key
// does not depend on the configuration (keys hold the MAC, so deliveries
// under different secrets cannot collide), so a reload that changes
// secrets keeps what was delivered.
var (
	replayPool         = caddy.NewUsagePool()
	sharedMemoryReplay atomic.Pointer[memoryReplay] // for metrics
)

const memoryReplayPoolKey = "reready_verify.replay.memory"

// loadMemoryReplay returns the process's memory store, creating it on
// first use, and applies capacity, lease and logger to it (the config
// provisioned last wins). Call release, once, from the handler's Cleanup;
// extra calls do nothing.
func loadMemoryReplay(capacity int, lease time.Duration, logger *zap.Logger) (store *memoryReplay, release func() error) {
	v, _, _ := replayPool.LoadOrNew(memoryReplayPoolKey, func() (caddy.Destructor, error) {
		m := newMemoryReplay(capacity, lease)
		sharedMemoryReplay.Store(m)
		return m, nil
	})
	store = v.(*memoryReplay)
	store.configure(capacity, lease, logger)
	release = sync.OnceValue(func() error {
		_, err := replayPool.Delete(memoryReplayPoolKey)
		return err
	})
	return store, release
}
