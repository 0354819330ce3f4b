package rereadyverify

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// This file is the replay gate: it remembers signature-verified deliveries
// whose upstream answered 2xx, so a repeat is acknowledged without being
// forwarded again, and it refuses a repeat that arrives while the first is
// still being forwarded.
//
// The handler's side of the contract, for a signature-verified request:
//
//	st, claim, err := store.Begin(ctx, key, now)
//	switch {
//	case err != nil:           // storage trouble: see replayStore
//	case st == replayDelivered: // 200, do not forward
//	case st == replayInFlight:  // 409, do not forward
//	default:                    // replayNew: forward, then exactly one of
//		store.Commit(ctx, claim, now, 2*tolerance) // upstream answered 2xx
//		store.Abort(ctx, claim)                    // anything else, or a panic
//	}
//
// Two implementations: memoryReplay (one per process, bounded, kept across
// config reloads) and storageReplay (Caddy's configured storage, shared by
// every gateway that uses the same storage).

// Replay defaults.
const (
	// DefaultReplayCapacity bounds the memory store's entries.
	DefaultReplayCapacity = 100_000

	// DefaultReplayLease is how long a stored claim on a delivery that is
	// being forwarded lasts unless its gateway renews it (every third of
	// it, while the forward runs): it bounds how long a crashed gateway
	// blocks that delivery across the fleet.
	DefaultReplayLease = time.Minute

	// memoryClaimLease: claims in the memory store do not lapse. Their own
	// request always settles them (deferred, panics included), and the
	// process holding them cannot have crashed while they matter.
	memoryClaimLease = 100 * 365 * 24 * time.Hour

	// replayLockWait bounds the wait for a storage lock. It exceeds the
	// default file_system storage's stale-lock age (10s) so a lock left by
	// a crashed gateway is broken rather than waited out forever.
	replayLockWait = 15 * time.Second

	// replaySweepInterval is how often stale storage records are removed.
	replaySweepInterval = 5 * time.Minute

	// replaySweepLimit bounds the records one sweep looks at.
	replaySweepLimit = 10_000

	// replayStoragePrefix holds one record per remembered delivery.
	replayStoragePrefix = "reready_verify/replay"

	// replaySweepKey records when the fleet last swept.
	replaySweepKey = "reready_verify/replay_sweep"
)

// Reason codes for requests the replay gate stops.
const (
	ReasonReplayDelivered   Reason = "replay"                   // 200: already delivered
	ReasonReplayInFlight    Reason = "replay_in_flight"         // 409: being delivered
	ReasonReplayUnavailable Reason = "replay_store_unavailable" // the store failed
)

// replayKey names one delivery: its delivery id (delivery.go), derived
// from the verified t and the MAC that matched. The MAC depends on the
// secret, so endpoints with their own secrets that receive the same payload
// never share a key, and it does not change when secrets are added,
// removed or reordered.
type replayKey = deliveryID

// memKey is the key as the memory store indexes it: the id's 128-bit digest
// with t folded in. Different deliveries collide with probability about
// n²/2¹²⁹ (n entries), and nobody can aim for a collision: only
// signature-verified requests reach the store, and the digest is a SHA-256
// of an HMAC output.
type memKey [2]uint64

func (k replayKey) mem() memKey {
	return memKey{
		binary.LittleEndian.Uint64(k.h[0:8]) ^ uint64(k.t),
		binary.LittleEndian.Uint64(k.h[8:16]),
	}
}

// name is the key's storage name and lock name suffix: the delivery id,
// "<t>-<hex digest>". Names sort by t while t has 10 digits (2001 to 2286).
func (k replayKey) name() string { return k.String() }

// replayState is what Begin found.
type replayState uint8

const (
	replayNew       replayState = iota // not seen: claimed for the caller
	replayDelivered                    // delivered earlier: acknowledge
	replayInFlight                     // being forwarded now: refuse
)

func (s replayState) String() string {
	switch s {
	case replayNew:
		return "new"
	case replayDelivered:
		return "delivered"
	case replayInFlight:
		return "in_flight"
	}
	return "replayState(" + strconv.Itoa(int(s)) + ")"
}

// replayClaim is the caller's hold on a new delivery. Pass it to exactly
// one of Commit or Abort. id tells this claim from a later one on the same
// key, made after this one's lease ran out; it is never 0.
type replayClaim struct {
	key replayKey
	id  uint64
}

// replayStore is the replay gate's memory. Implementations are safe for
// concurrent use.
type replayStore interface {
	// Begin looks k up at time now. For a key that is unknown, or whose
	// record or claim has expired, it records a claim and returns replayNew
	// with that claim; otherwise replayDelivered or replayInFlight and a
	// zero claim. With an error the state is meaningless; only
	// storageReplay returns errors.
	Begin(ctx context.Context, k replayKey, now time.Time) (replayState, replayClaim, error)

	// Commit records the claimed delivery as delivered until now+ttl,
	// replacing the claim. It records it even if the claim's lease ran out
	// or another caller took the key over meanwhile: the delivery happened.
	// A ttl <= 0 makes it an Abort. Cancellation of ctx is ignored.
	Commit(ctx context.Context, c replayClaim, now time.Time, ttl time.Duration) error

	// Abort drops the claim, so a retry is forwarded. It does nothing if
	// the key is no longer held by this claim. Cancellation of ctx is
	// ignored.
	Abort(ctx context.Context, c replayClaim) error
}

// ---------------------------------------------------------------------------
// Memory

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
	t := now.UnixNano()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.dropExpired(t)
	mk := k.mem()
	if i, ok := m.index[mk]; ok {
		s := &m.slots[i]
		if s.expires > t {
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

// ---------------------------------------------------------------------------
// Storage

// storageReplay keeps records in a certmagic.Storage (Caddy's configured
// storage), one per key under replayStoragePrefix, so every gateway sharing
// the storage sees the same deliveries. Each Begin, Commit and Abort is a
// short check-and-set under the storage's lock for that key. Claims are
// stored as in-flight records that expire after the lease, so a gateway
// that crashed mid-forward blocks that delivery for at most the lease.
// A background sweep removes expired records.
type storageReplay struct {
	storage  certmagic.Storage
	lease    time.Duration
	lockWait time.Duration
	now      func() time.Time
	logger   *zap.Logger
	interval time.Duration

	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// storageReplayConfig configures newStorageReplay; zero values mean the
// defaults.
type storageReplayConfig struct {
	Lease         time.Duration    // DefaultReplayLease
	LockWait      time.Duration    // 15s
	SweepInterval time.Duration    // 5m; negative: no background sweep
	Now           func() time.Time // time.Now; used by the sweep only
	Logger        *zap.Logger      // a no-op logger
}

// newStorageReplay returns a store over st and starts its background
// sweep. Call Close, from the handler's Cleanup, to stop it.
func newStorageReplay(st certmagic.Storage, cfg storageReplayConfig) *storageReplay {
	s := &storageReplay{
		storage:  st,
		lease:    cfg.Lease,
		lockWait: cfg.LockWait,
		now:      cfg.Now,
		logger:   cfg.Logger,
		interval: cfg.SweepInterval,
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	if s.lease <= 0 {
		s.lease = DefaultReplayLease
	}
	if s.lockWait <= 0 {
		s.lockWait = replayLockWait
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.logger == nil {
		s.logger = zap.NewNop()
	}
	if s.interval == 0 {
		s.interval = replaySweepInterval
	}
	if s.interval > 0 {
		go s.sweepLoop()
	} else {
		close(s.done)
	}
	return s
}

// Close stops the background sweep and waits for it. Records stay.
func (s *storageReplay) Close() error {
	s.once.Do(func() { close(s.stop) })
	<-s.done
	return nil
}

// replayRecord is a stored record, as JSON.
type replayRecord struct {
	State   string `json:"state"`           // "delivered" or "in_flight"
	Expires int64  `json:"expires"`         // unix nanoseconds
	Claim   string `json:"claim,omitempty"` // in_flight: the claim id, hex
}

func (s *storageReplay) key(k replayKey) string { return replayStoragePrefix + "/" + k.name() }

// locked runs f under the storage lock for key, with the lock wait bounded
// by lockWait.
func (s *storageReplay) locked(ctx context.Context, key string, f func(context.Context) error) error {
	return withStorageLock(ctx, s.storage, s.lockWait, key, s.logger, f)
}

// lockName is the storage lock name for key.
func lockName(key string) string { return strings.ReplaceAll(key, "/", "_") }

// withStorageLock runs f under st's lock for key (named after it, with '/'
// as '_'), waiting at most wait for the lock. f gets a context with that
// deadline. Unlocking ignores the caller's cancellation. Storage locks are
// advisory: f must re-read whatever it decides on.
func withStorageLock(ctx context.Context, st certmagic.Storage, wait time.Duration, key string, log *zap.Logger, f func(context.Context) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	lctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	name := lockName(key)
	if err := st.Lock(lctx, name); err != nil {
		return fmt.Errorf("locking %s: %w", key, err)
	}
	err := f(lctx)
	if uerr := st.Unlock(context.WithoutCancel(ctx), name); uerr != nil {
		log.Error("unlocking storage", zap.String("key", key), zap.Error(uerr))
	}
	return err
}

// load returns the record at key; ok is false when there is none or it
// does not parse (a damaged record is treated as absent and overwritten).
func (s *storageReplay) load(ctx context.Context, key string) (rec replayRecord, ok bool, err error) {
	data, err := s.storage.Load(ctx, key)
	if errors.Is(err, fs.ErrNotExist) {
		return rec, false, nil
	}
	if err != nil {
		return rec, false, fmt.Errorf("replay: loading %s: %w", key, err)
	}
	if err := json.Unmarshal(data, &rec); err != nil || rec.State != "delivered" && rec.State != "in_flight" {
		s.logger.Warn("replay: ignoring a damaged record", zap.String("key", key))
		return replayRecord{}, false, nil
	}
	return rec, true, nil
}

func (s *storageReplay) store(ctx context.Context, key string, rec replayRecord) error {
	data, _ := json.Marshal(rec)
	if err := s.storage.Store(ctx, key, data); err != nil {
		return fmt.Errorf("replay: storing %s: %w", key, err)
	}
	return nil
}

// Begin implements replayStore.
func (s *storageReplay) Begin(ctx context.Context, k replayKey, now time.Time) (replayState, replayClaim, error) {
	key := s.key(k)
	t := now.UnixNano()
	st, c := replayNew, replayClaim{}
	err := s.locked(ctx, key, func(ctx context.Context) error {
		rec, ok, err := s.load(ctx, key)
		if err != nil {
			return err
		}
		if ok && rec.Expires > t {
			if rec.State == "delivered" {
				st = replayDelivered
			} else {
				st = replayInFlight
			}
			return nil
		}
		c = replayClaim{key: k, id: newClaimID()}
		return s.store(ctx, key, replayRecord{State: "in_flight", Expires: t + int64(s.lease), Claim: claimHex(c.id)})
	})
	if err != nil {
		return replayNew, replayClaim{}, err
	}
	return st, c, nil
}

// Commit implements replayStore.
func (s *storageReplay) Commit(ctx context.Context, c replayClaim, now time.Time, ttl time.Duration) error {
	if ttl <= 0 {
		return s.Abort(ctx, c)
	}
	key := s.key(c.key)
	return s.locked(context.WithoutCancel(ctx), key, func(ctx context.Context) error {
		return s.store(ctx, key, replayRecord{State: "delivered", Expires: now.UnixNano() + int64(ttl)})
	})
}

// Renew extends a claim that is still held by c for another lease, so a
// delivery whose upstream is slow stays in flight (409 for repeats) across
// the fleet; a gateway that crashed stops renewing and its claim lapses.
func (s *storageReplay) Renew(ctx context.Context, c replayClaim, now time.Time) error {
	key := s.key(c.key)
	return s.locked(context.WithoutCancel(ctx), key, func(ctx context.Context) error {
		rec, ok, err := s.load(ctx, key)
		if err != nil || !ok || rec.State != "in_flight" || rec.Claim != claimHex(c.id) {
			return err
		}
		rec.Expires = now.UnixNano() + int64(s.lease)
		return s.store(ctx, key, rec)
	})
}

// Abort implements replayStore.
func (s *storageReplay) Abort(ctx context.Context, c replayClaim) error {
	key := s.key(c.key)
	return s.locked(context.WithoutCancel(ctx), key, func(ctx context.Context) error {
		rec, ok, err := s.load(ctx, key)
		if err != nil || !ok || rec.State != "in_flight" || rec.Claim != claimHex(c.id) {
			return err
		}
		if err := s.storage.Delete(ctx, key); err != nil {
			return fmt.Errorf("replay: deleting %s: %w", key, err)
		}
		return nil
	})
}

func (s *storageReplay) sweepLoop() {
	defer close(s.done)
	base, stop := context.WithCancel(context.Background())
	defer stop()
	go func() { // Close ends a sweep under way
		select {
		case <-s.stop:
			stop()
		case <-base.Done():
		}
	}()
	tick := time.NewTicker(s.interval)
	defer tick.Stop()
	for {
		select {
		case <-base.Done():
			return
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(base, max(s.interval, time.Minute))
		if s.claimSweep(ctx) {
			n, err := s.sweep(ctx)
			if err != nil && base.Err() == nil {
				s.logger.Warn("replay: sweeping storage", zap.Int("deleted", n), zap.Error(err))
			} else if n > 0 {
				s.logger.Debug("replay: swept storage", zap.Int("deleted", n))
			}
		}
		cancel()
	}
}

// claimSweep reports whether this gateway should sweep now: it records the
// sweep time in storage so a fleet sweeps about once per interval, not
// once per gateway.
func (s *storageReplay) claimSweep(ctx context.Context) bool {
	now := s.now().UnixNano()
	due := false
	err := s.locked(ctx, replaySweepKey, func(ctx context.Context) error {
		data, err := s.storage.Load(ctx, replaySweepKey)
		if err == nil {
			if last, perr := strconv.ParseInt(string(data), 10, 64); perr == nil && now-last < int64(s.interval)/2 {
				return nil
			}
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		due = true
		return s.storage.Store(ctx, replaySweepKey, strconv.AppendInt(nil, now, 10))
	})
	if err != nil {
		s.logger.Warn("replay: scheduling a sweep", zap.Error(err))
	}
	return due && err == nil
}

// sweep deletes expired and damaged records, looking at no more than
// replaySweepLimit of them (oldest t first, as names sort by t).
//
// An expired delivery is deleted as it is: nothing writes its key again,
// because its t has left the signature's tolerance window by then (with the
// ttl of 2 x tolerance the handler uses). An expired claim is re-checked
// under its lock, since a retry may claim the key afresh meanwhile; such
// claims are rare (a crashed gateway), so the locks are few.
func (s *storageReplay) sweep(ctx context.Context) (deleted int, err error) {
	keys, err := s.storage.List(ctx, replayStoragePrefix, true)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("replay: listing %s: %w", replayStoragePrefix, err)
	}
	if len(keys) > replaySweepLimit {
		keys = keys[:replaySweepLimit]
	}
	expired := func(rec replayRecord, ok bool) bool {
		return !ok || rec.Expires <= s.now().UnixNano()
	}
	for _, key := range keys {
		if err := ctx.Err(); err != nil {
			return deleted, err
		}
		rec, ok, err := s.load(ctx, key)
		if err != nil || !expired(rec, ok) {
			continue // unreadable now (or a directory), or live
		}
		if ok && rec.State == "in_flight" {
			err = s.locked(ctx, key, func(ctx context.Context) error {
				rec, ok, err := s.load(ctx, key)
				if err != nil || !expired(rec, ok) {
					return err
				}
				return s.storage.Delete(ctx, key)
			})
		} else {
			err = s.storage.Delete(ctx, key)
		}
		if err != nil {
			return deleted, fmt.Errorf("replay: deleting %s: %w", key, err)
		}
		deleted++
	}
	return deleted, nil
}

// newClaimID returns a random, non-zero claim id; ids must differ across
// every gateway sharing the storage.
func newClaimID() uint64 {
	var b [8]byte
	for {
		_, _ = rand.Read(b[:])
		if id := binary.LittleEndian.Uint64(b[:]); id != 0 {
			return id
		}
	}
}

func claimHex(id uint64) string { return strconv.FormatUint(id, 16) }

// Interface guards.
var (
	_ replayStore      = (*memoryReplay)(nil)
	_ replayStore      = (*storageReplay)(nil)
	_ caddy.Destructor = (*memoryReplay)(nil)
)
