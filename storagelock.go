package rereadyverify

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// Storage locks, shared by the replay store and the queue.

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

// tryLock takes a storage lock without waiting for another holder: with
// TryLock where the storage has it, else Lock bounded by a second.
func tryLock(ctx context.Context, st certmagic.Storage, key string) (bool, error) {
	name := lockName(key)
	if tl, ok := st.(certmagic.TryLocker); ok {
		return tl.TryLock(ctx, name)
	}
	lctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := st.Lock(lctx, name); err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			return false, nil
		}
		return false, err
	}
	return true, nil
}
