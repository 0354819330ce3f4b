package rereadyverify

import (
	"context"
	"encoding/binary"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
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

	// Reopen is Begin for a delivery recorded as delivered that was not:
	// a queued delivery given up on (dead), sent again. A delivered
	// record counts as unknown; a claim in flight is still replayInFlight.
	Reopen(ctx context.Context, k replayKey, now time.Time) (replayState, replayClaim, error)

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

// Interface guards.
var (
	_ replayStore      = (*memoryReplay)(nil)
	_ replayStore      = (*storageReplay)(nil)
	_ caddy.Destructor = (*memoryReplay)(nil)
)
