package rereadyverify

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// This file is what the module needs from Caddy's storage, coded to the
// certmagic.Storage interface's weakest promise: locks are advisory, may be
// left behind by a crash or a failed write and, on a networked store, may
// expire while their holder still works; a listing may fail part-way (a
// failed listing is not an empty one); every call may fail on its own.

// Storage retries: a failed call on the request path or in a view is tried
// again a few times before its error is reported.
const (
	storageTries    = 4
	storageRetryGap = 25 * time.Millisecond // doubled after each try

	// storageCallTimeout bounds one call to a networked storage (Lock
	// excepted, which its caller bounds).
	storageCallTimeout = 3 * time.Second
)

// retryStorage runs f until it succeeds, at most storageTries times, with a
// short growing pause between tries, and returns its last error. It stops
// early when ctx ends, and after a call that ran out of time (it waited
// long enough already).
func retryStorage(ctx context.Context, f func() error) error {
	gap := storageRetryGap
	for try := 1; ; try++ {
		err := f()
		if err == nil || try == storageTries || ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		select {
		case <-time.After(gap):
		case <-ctx.Done():
			return err
		}
		gap *= 2
	}
}

// listKeys lists the keys directly under prefix. A listing that fails is
// retried, and then is an error, never an empty or partial list: certmagic's
// file_system storage walks the directory and stops with a not-exist error
// when a file is renamed or removed during the walk (every Store writes a
// temporary file and renames it), returning what it had walked so far. Its
// directory is therefore read in one go instead (os.ReadDir, which does not
// stat each entry); other storages are asked through List. A not-exist
// error from List means an empty prefix only if the prefix itself does not
// exist.
func listKeys(ctx context.Context, st certmagic.Storage, prefix string) ([]string, error) {
	if fsys, ok := st.(*certmagic.FileStorage); ok {
		return listDir(fsys, prefix)
	}
	var keys []string
	err := retryStorage(ctx, func() error {
		var err error
		keys, err = st.List(ctx, prefix, false)
		if errors.Is(err, fs.ErrNotExist) {
			if _, serr := st.Stat(ctx, prefix); errors.Is(serr, fs.ErrNotExist) {
				keys, err = nil, nil // nothing stored under prefix
			}
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", prefix, err)
	}
	return keys, nil
}

// listDir lists a file_system storage's directory for prefix.
func listDir(fsys *certmagic.FileStorage, prefix string) ([]string, error) {
	entries, err := os.ReadDir(fsys.Filename(prefix))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", prefix, err)
	}
	keys := make([]string, len(entries))
	for i, e := range entries {
		keys[i] = path.Join(prefix, e.Name())
	}
	return keys, nil
}

// baseName is the last element of a storage key.
func baseName(key string) string { return key[strings.LastIndexByte(key, '/')+1:] }

// lockName is the storage lock name for key.
func lockName(key string) string { return strings.ReplaceAll(key, "/", "_") }

// localLocks lets holders of the same storage lock in this process wait
// for each other in memory: a storage lock held by this process is waited
// out by polling (file_system polls every second), which would make
// goroutines of one gateway queue behind each other for seconds. The
// storage lock is still taken, for the other gateways.
var localLocks = keyedMutex{m: map[string]*keyedEntry{}}

// keyedMutex is a set of mutexes by name, each existing while in use.
type keyedMutex struct {
	mu sync.Mutex
	m  map[string]*keyedEntry
}

type keyedEntry struct {
	token chan struct{} // holds one value while locked
	refs  int
}

func (k *keyedMutex) entry(name string) *keyedEntry {
	k.mu.Lock()
	defer k.mu.Unlock()
	e := k.m[name]
	if e == nil {
		e = &keyedEntry{token: make(chan struct{}, 1)}
		k.m[name] = e
	}
	e.refs++
	return e
}

func (k *keyedMutex) drop(name string, e *keyedEntry) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if e.refs--; e.refs == 0 {
		delete(k.m, name)
	}
}

// lock takes name, waiting until ctx ends; unlock releases it.
func (k *keyedMutex) lock(ctx context.Context, name string) (unlock func(), err error) {
	e := k.entry(name)
	select {
	case e.token <- struct{}{}:
		return func() { <-e.token; k.drop(name, e) }, nil
	case <-ctx.Done():
		k.drop(name, e)
		return nil, ctx.Err()
	}
}

// tryLock takes name if it is free.
func (k *keyedMutex) tryLock(name string) (unlock func(), ok bool) {
	e := k.entry(name)
	select {
	case e.token <- struct{}{}:
		return func() { <-e.token; k.drop(name, e) }, true
	default:
		k.drop(name, e)
		return nil, false
	}
}

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
	unlock, err := lockStorage(lctx, st, key)
	if err != nil {
		return err
	}
	err = f(lctx)
	unlock(ctx, log)
	return err
}

// lockStorage takes key's lock, in this process and in st, waiting until
// ctx ends. The storage's own Lock breaks a lock left behind by a crash or
// a failed write (file_system: an empty lock file after about 2 s, one no
// longer refreshed 10 s after its last refresh; Redis: when its TTL runs
// out). The returned unlock logs what fails.
func lockStorage(ctx context.Context, st certmagic.Storage, key string) (unlock func(context.Context, *zap.Logger), err error) {
	name := lockName(key)
	local, err := localLocks.lock(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("locking %s: %w", key, err)
	}
	if err := st.Lock(ctx, name); err != nil {
		local()
		return nil, fmt.Errorf("locking %s: %w", key, err)
	}
	return storageUnlock(st, key, name, local), nil
}

// tryLockStorage takes key's lock without waiting for another holder: with
// TryLock where the storage has it, else Lock bounded by a second. ok is
// false when it is held, here or by another gateway.
func tryLockStorage(ctx context.Context, st certmagic.Storage, key string) (unlock func(context.Context, *zap.Logger), ok bool, err error) {
	name := lockName(key)
	local, ok := localLocks.tryLock(name)
	if !ok {
		return nil, false, nil
	}
	if tl, isTry := st.(certmagic.TryLocker); isTry {
		ok, err = tl.TryLock(ctx, name)
	} else {
		lctx, cancel := context.WithTimeout(ctx, time.Second)
		err = st.Lock(lctx, name)
		cancel()
		ok = err == nil
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			err = nil
		}
	}
	if !ok || err != nil {
		local()
		if err != nil {
			return nil, false, fmt.Errorf("locking %s: %w", key, err)
		}
		return nil, false, nil
	}
	return storageUnlock(st, key, name, local), true, nil
}

func storageUnlock(st certmagic.Storage, key, name string, local func()) func(context.Context, *zap.Logger) {
	return func(ctx context.Context, log *zap.Logger) {
		if err := st.Unlock(context.WithoutCancel(ctx), name); err != nil {
			log.Error("unlocking storage", zap.String("key", key), zap.Error(err))
		}
		local()
	}
}

// bounded returns st with every call bounded in time: a call that has not
// answered within storageCallTimeout (Lock: when its context ends) returns
// an error, and is left to finish in the background; a lock it then takes
// is released. A networked storage's client can wait on a frozen server
// longer than its own timeouts say (go-redis does, on a new connection);
// the gateway must not. file_system, local and context-free, is returned
// as it is.
func bounded(st certmagic.Storage) certmagic.Storage {
	if _, ok := st.(*certmagic.FileStorage); ok || st == nil {
		return st
	}
	b := &boundedStorage{inner: st, timeout: storageCallTimeout}
	if tl, ok := st.(certmagic.TryLocker); ok {
		return &boundedTryStorage{boundedStorage: b, try: tl}
	}
	return b
}

// boundedStorage is bounded's storage.
type boundedStorage struct {
	inner   certmagic.Storage
	timeout time.Duration // 0: the caller's context only
}

// boundedTryStorage is a boundedStorage over a storage with TryLock.
type boundedTryStorage struct {
	*boundedStorage
	try certmagic.TryLocker
}

// within runs f, returning when it does or when timeout (if any) or ctx
// runs out; then abandoned, if set, gets f's late result.
func within[T any](ctx context.Context, timeout time.Duration, op, key string, f func(context.Context) (T, error), abandoned func(T, error)) (T, error) {
	cctx, cancel := ctx, context.CancelFunc(func() {})
	if timeout > 0 {
		cctx, cancel = context.WithTimeout(ctx, timeout)
	}
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := f(cctx)
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		cancel()
		return r.v, r.err
	case <-cctx.Done():
		go func() {
			r := <-done
			cancel()
			if abandoned != nil {
				abandoned(r.v, r.err)
			}
		}()
		var zero T
		return zero, fmt.Errorf("storage %s %s: no answer: %w", op, key, cctx.Err())
	}
}

func (b *boundedStorage) Store(ctx context.Context, key string, value []byte) error {
	_, err := within(ctx, b.timeout, "store", key, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, b.inner.Store(ctx, key, value)
	}, nil)
	return err
}

func (b *boundedStorage) Load(ctx context.Context, key string) ([]byte, error) {
	return within(ctx, b.timeout, "load", key, func(ctx context.Context) ([]byte, error) { return b.inner.Load(ctx, key) }, nil)
}

func (b *boundedStorage) Delete(ctx context.Context, key string) error {
	_, err := within(ctx, b.timeout, "delete", key, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, b.inner.Delete(ctx, key)
	}, nil)
	return err
}

func (b *boundedStorage) Exists(ctx context.Context, key string) bool {
	ok, _ := within(ctx, b.timeout, "exists", key, func(ctx context.Context) (bool, error) { return b.inner.Exists(ctx, key), nil }, nil)
	return ok
}

func (b *boundedStorage) List(ctx context.Context, path string, recursive bool) ([]string, error) {
	return within(ctx, b.timeout, "list", path, func(ctx context.Context) ([]string, error) { return b.inner.List(ctx, path, recursive) }, nil)
}

func (b *boundedStorage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	return within(ctx, b.timeout, "stat", key, func(ctx context.Context) (certmagic.KeyInfo, error) { return b.inner.Stat(ctx, key) }, nil)
}

// Lock waits as long as ctx allows; a lock taken after that is released.
func (b *boundedStorage) Lock(ctx context.Context, name string) error {
	_, err := within(ctx, 0, "lock", name, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, b.inner.Lock(ctx, name)
	}, func(_ struct{}, err error) {
		if err == nil {
			_ = b.unlockLate(name)
		}
	})
	return err
}

func (b *boundedStorage) Unlock(ctx context.Context, name string) error {
	_, err := within(ctx, b.timeout, "unlock", name, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, b.inner.Unlock(ctx, name)
	}, nil)
	return err
}

func (b *boundedStorage) unlockLate(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
	defer cancel()
	return b.inner.Unlock(ctx, name)
}

func (b *boundedTryStorage) TryLock(ctx context.Context, name string) (bool, error) {
	return within(ctx, b.timeout, "trylock", name, func(ctx context.Context) (bool, error) { return b.try.TryLock(ctx, name) }, func(ok bool, err error) {
		if ok && err == nil {
			_ = b.unlockLate(name)
		}
	})
}

// String is the inner storage's own (which redacts what it must), or its
// type.
func (b *boundedStorage) String() string {
	if s, ok := b.inner.(fmt.Stringer); ok {
		return s.String()
	}
	return fmt.Sprintf("%T", b.inner)
}

// Interface guards
var (
	_ certmagic.Storage   = (*boundedStorage)(nil)
	_ certmagic.TryLocker = (*boundedTryStorage)(nil)
)
