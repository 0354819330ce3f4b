package rereadyverify

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// The storage replay store: records in Caddy's configured storage, shared
// by every gateway that uses it.

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

	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
	started sync.Once
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

// newStorageReplay returns a store over st. Its background sweep starts
// with startSweep (from the reready app's Start: `caddy validate` provisions
// without starting). Call Close, from the handler's Cleanup, to stop it.
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
	return s
}

// startSweep starts the background sweep, once; not after Close.
func (s *storageReplay) startSweep() {
	s.started.Do(func() {
		if s.interval > 0 {
			go s.sweepLoop()
		} else {
			close(s.done)
		}
	})
}

// Close stops the background sweep and waits for it. Records stay.
func (s *storageReplay) Close() error {
	s.once.Do(func() { close(s.stop) })
	s.started.Do(func() { close(s.done) }) // never started: nothing to wait for
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

// load returns the record at key; ok is false when there is none or it
// does not parse (a damaged record is treated as absent and overwritten).
func (s *storageReplay) load(ctx context.Context, key string) (rec replayRecord, ok bool, err error) {
	rec, found, err := s.loadFound(ctx, key)
	return rec, found && err == nil && rec.State != "", err
}

// loadFound is load telling a missing record (found false) from a damaged
// one (found, zero record).
func (s *storageReplay) loadFound(ctx context.Context, key string) (rec replayRecord, found bool, err error) {
	data, err := s.storage.Load(ctx, key)
	if errors.Is(err, fs.ErrNotExist) {
		return rec, false, nil
	}
	if err != nil {
		return rec, false, fmt.Errorf("replay: loading %s: %w", key, err)
	}
	if err := json.Unmarshal(data, &rec); err != nil || rec.State != "delivered" && rec.State != "in_flight" {
		s.logger.Warn("replay: ignoring a damaged record", zap.String("key", key))
		return replayRecord{}, true, nil
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
	return s.begin(ctx, k, now, false)
}

// Reopen implements replayStore.
func (s *storageReplay) Reopen(ctx context.Context, k replayKey, now time.Time) (replayState, replayClaim, error) {
	return s.begin(ctx, k, now, true)
}

// begin is Begin; with reopen, a delivery is claimed as if unknown.
func (s *storageReplay) begin(ctx context.Context, k replayKey, now time.Time, reopen bool) (replayState, replayClaim, error) {
	key := s.key(k)
	t := now.UnixNano()
	st, c := replayNew, replayClaim{}
	err := s.locked(ctx, key, func(ctx context.Context) error {
		rec, ok, err := s.load(ctx, key)
		if err != nil {
			return err
		}
		if ok && rec.Expires > t && !(reopen && rec.State == "delivered") {
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
	keys, err := listKeys(ctx, s.storage, replayStoragePrefix)
	if err != nil {
		return 0, fmt.Errorf("replay: %w", err)
	}
	// Only records: file_system writes each through a temporary file beside
	// it (all digits), which must not be taken for a damaged record.
	keys = slices.DeleteFunc(keys, func(k string) bool { return !validItemName(baseName(k)) })
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
		rec, found, err := s.loadFound(ctx, key)
		ok := found && rec.State != ""
		if err != nil || !found || !expired(rec, ok) {
			// Unreadable now, or live; or listed but not (yet, or any
			// more) stored: a networked storage lists a key before its
			// value is written and after it is deleted.
			continue
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
