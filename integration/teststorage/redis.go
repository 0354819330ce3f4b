package teststorage

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Redis{})
}

// Redis is a certmagic storage over a Redis server with the semantics the
// caddy-storage-redis module documents and implements, so that the
// gateway's promises can be tested against them:
//
//   - Store adds the key to its directory's index (a sorted set scored by
//     the modification second, its parents' indexes too) before it writes
//     the value; Delete removes the index entry before the value. A listed
//     key may therefore not load yet, or no longer load.
//   - List reads a directory's index: by second, then by name, not by
//     insertion; a directory with nothing in it lists empty, without error.
//   - Exists answers false when Redis cannot be asked.
//   - Lock sets a key with a TTL (lock_ttl, 5s), refreshed every
//     lock_refresh (3s) while held, and polls every lock_poll (1s) while
//     another holds it. If Redis cannot be reached for longer than the TTL,
//     the lock expires while its holder still believes it holds it, and
//     another may take it. Unlock of a lock no longer held is silent.
//     There is no TryLock.
//   - Every call is a round trip that can fail or time out on its own.
//
// Caddyfile:
//
//	storage reready_test_redis {
//		address      127.0.0.1:6379
//		key_prefix   caddy
//		lock_ttl     5s
//		lock_refresh 3s
//		lock_poll    1s
//		timeout      3s
//	}
type Redis struct {
	Address     string         `json:"address,omitempty"`
	KeyPrefix   string         `json:"key_prefix,omitempty"`
	LockTTL     caddy.Duration `json:"lock_ttl,omitempty"`
	LockRefresh caddy.Duration `json:"lock_refresh,omitempty"`
	LockPoll    caddy.Duration `json:"lock_poll,omitempty"`
	Timeout     caddy.Duration `json:"timeout,omitempty"`

	store *redisStorage
}

// CaddyModule returns the Caddy module information.
func (Redis) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.storage.reready_test_redis",
		New: func() caddy.Module { return new(Redis) },
	}
}

// Provision connects.
func (r *Redis) Provision(ctx caddy.Context) error {
	if r.Address == "" {
		r.Address = "127.0.0.1:6379"
	}
	if r.KeyPrefix == "" {
		r.KeyPrefix = "caddy"
	}
	def := func(d *caddy.Duration, v time.Duration) {
		if *d <= 0 {
			*d = caddy.Duration(v)
		}
	}
	def(&r.LockTTL, 5*time.Second)
	def(&r.LockRefresh, 3*time.Second)
	def(&r.LockPoll, time.Second)
	def(&r.Timeout, 3*time.Second)
	timeout := time.Duration(r.Timeout)
	client := redis.NewClient(&redis.Options{
		Addr:         r.Address,
		DialTimeout:  timeout,
		ReadTimeout:  timeout,
		WriteTimeout: timeout,
		MaxRetries:   -1, // every call is one round trip, as the tests expect
	})
	r.store = &redisStorage{
		client:  client,
		prefix:  r.KeyPrefix,
		ttl:     time.Duration(r.LockTTL),
		refresh: time.Duration(r.LockRefresh),
		poll:    time.Duration(r.LockPoll),
		held:    map[string]*heldLock{},
		logger:  ctx.Logger(),
	}
	return nil
}

// Cleanup closes the client a while later: a config being replaced may
// still finish work on it.
func (r *Redis) Cleanup() error {
	if r.store != nil {
		c := r.store.client
		time.AfterFunc(10*time.Second, func() { c.Close() })
	}
	return nil
}

// CertMagicStorage returns the storage.
func (r *Redis) CertMagicStorage() (certmagic.Storage, error) { return r.store, nil }

// UnmarshalCaddyfile reads the block.
func (r *Redis) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module's name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		opt := d.Val()
		if !d.NextArg() {
			return d.ArgErr()
		}
		v := d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
		var dur *caddy.Duration
		switch opt {
		case "address":
			r.Address = v
		case "key_prefix":
			r.KeyPrefix = v
		case "lock_ttl":
			dur = &r.LockTTL
		case "lock_refresh":
			dur = &r.LockRefresh
		case "lock_poll":
			dur = &r.LockPoll
		case "timeout":
			dur = &r.Timeout
		default:
			return d.Errf("unknown option %q", opt)
		}
		if dur != nil {
			t, err := caddy.ParseDuration(v)
			if err != nil {
				return d.Errf("%s %q: %v", opt, v, err)
			}
			*dur = caddy.Duration(t)
		}
	}
	return nil
}

// redisStorage is the certmagic.Storage.
type redisStorage struct {
	client             *redis.Client
	prefix             string
	ttl, refresh, poll time.Duration
	logger             *zap.Logger
	mu                 sync.Mutex
	held               map[string]*heldLock
}

type heldLock struct {
	token string
	stop  context.CancelFunc
}

// value is what a key holds in Redis.
type value struct {
	Value    []byte    `json:"value"`
	Modified time.Time `json:"modified"`
}

func (s *redisStorage) key(k string) string { return path.Join(s.prefix, k) }

// index adds base to dir's index and, while that is new, dir to its
// parent's.
func (s *redisStorage) index(ctx context.Context, key string, score float64) error {
	for dir, base := path.Dir(key), path.Base(key); dir != "." && dir != "/"; {
		added, err := s.client.ZAdd(ctx, dir, redis.Z{Score: score, Member: base}).Result()
		if err != nil {
			return fmt.Errorf("indexing %s: %w", key, err)
		}
		if added == 0 {
			return nil
		}
		dir, base = path.Dir(dir), path.Base(dir)+"/"
	}
	return nil
}

// unindex removes base from dir's index and, once dir's index is empty,
// dir from its parent's.
func (s *redisStorage) unindex(ctx context.Context, key string) error {
	for dir, base := path.Dir(key), path.Base(key); dir != "." && dir != "/"; {
		if err := s.client.ZRem(ctx, dir, base).Err(); err != nil {
			return fmt.Errorf("unindexing %s: %w", key, err)
		}
		n, err := s.client.Exists(ctx, dir).Result()
		if err != nil {
			return fmt.Errorf("unindexing %s: %w", key, err)
		}
		if n > 0 {
			return nil
		}
		dir, base = path.Dir(dir), path.Base(dir)+"/"
	}
	return nil
}

// Store writes the index first, then the value.
func (s *redisStorage) Store(ctx context.Context, key string, v []byte) error {
	now := time.Now()
	data, err := json.Marshal(value{Value: v, Modified: now})
	if err != nil {
		return err
	}
	k := s.key(key)
	if err := s.index(ctx, k, float64(now.Unix())); err != nil {
		return err
	}
	if err := s.client.Set(ctx, k, data, 0).Err(); err != nil {
		return fmt.Errorf("storing %s: %w", key, err)
	}
	return nil
}

func (s *redisStorage) load(ctx context.Context, key string) (*value, error) {
	data, err := s.client.Get(ctx, s.key(key)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, fs.ErrNotExist
	}
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", key, err)
	}
	v := new(value)
	if err := json.Unmarshal(data, v); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", key, err)
	}
	return v, nil
}

func (s *redisStorage) Load(ctx context.Context, key string) ([]byte, error) {
	v, err := s.load(ctx, key)
	if err != nil {
		return nil, err
	}
	return v.Value, nil
}

// Delete removes the index entry first, then the value.
func (s *redisStorage) Delete(ctx context.Context, key string) error {
	k := s.key(key)
	if err := s.unindex(ctx, k); err != nil {
		return err
	}
	if err := s.client.Del(ctx, k).Err(); err != nil {
		return fmt.Errorf("deleting %s: %w", key, err)
	}
	return nil
}

// Exists answers false when Redis cannot be asked, as the module does.
func (s *redisStorage) Exists(ctx context.Context, key string) bool {
	n, err := s.client.Exists(ctx, s.key(key)).Result()
	if err != nil {
		s.logger.Warn("exists check failed", zap.String("key", key), zap.Error(err))
		return false
	}
	return n > 0
}

// List reads dir's index, by score (second) then name.
func (s *redisStorage) List(ctx context.Context, dir string, recursive bool) ([]string, error) {
	members, err := s.client.ZRange(ctx, s.key(dir), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", dir, err)
	}
	var keys []string
	for _, m := range members {
		name := strings.TrimSuffix(m, "/")
		full := path.Join(dir, name)
		if recursive && name != m {
			sub, err := s.List(ctx, full, true)
			if err != nil {
				return nil, err
			}
			keys = append(keys, sub...)
			continue
		}
		keys = append(keys, full)
	}
	return keys, nil
}

func (s *redisStorage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	v, err := s.load(ctx, key)
	if err != nil {
		return certmagic.KeyInfo{}, err
	}
	return certmagic.KeyInfo{Key: key, Modified: v.Modified, Size: int64(len(v.Value)), IsTerminal: true}, nil
}

func (s *redisStorage) lockKey(name string) string { return s.key(path.Join("locks", name)) }

// Lock sets the lock's key if absent, with the TTL, and keeps refreshing
// it while held; while another holds it, it polls.
func (s *redisStorage) Lock(ctx context.Context, name string) error {
	var b [16]byte
	_, _ = rand.Read(b[:])
	token := hex.EncodeToString(b[:])
	key := s.lockKey(name)
	for {
		ok, err := s.client.SetNX(ctx, key, token, s.ttl).Result()
		if err != nil {
			return fmt.Errorf("obtaining lock %s: %w", name, err)
		}
		if ok {
			break
		}
		select {
		case <-time.After(s.poll):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	rctx, stop := context.WithCancel(context.Background())
	s.mu.Lock()
	s.held[name] = &heldLock{token: token, stop: stop}
	s.mu.Unlock()
	go s.keepFresh(rctx, key, token)
	return nil
}

var refreshScript = redis.NewScript(`if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("pexpire", KEYS[1], ARGV[2]) else return 0 end`)

var releaseScript = redis.NewScript(`if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end`)

// keepFresh extends the lock every refresh period until stopped or lost;
// a failed refresh is tried again at the next period, by which time the
// lock may have expired.
func (s *redisStorage) keepFresh(ctx context.Context, key, token string) {
	t := time.NewTicker(s.refresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := refreshScript.Run(ctx, s.client, []string{key}, token, s.ttl.Milliseconds()).Int()
		switch {
		case err != nil && ctx.Err() == nil:
			s.logger.Warn("refreshing a lock failed; will retry", zap.String("key", key), zap.Error(err))
		case err == nil && n == 0:
			return // lost: expired, and maybe taken by another
		}
	}
}

// Unlock releases the lock if this storage still holds it; a lock that
// expired meanwhile is no error.
func (s *redisStorage) Unlock(ctx context.Context, name string) error {
	s.mu.Lock()
	h := s.held[name]
	delete(s.held, name)
	s.mu.Unlock()
	if h == nil {
		return nil
	}
	h.stop()
	if err := releaseScript.Run(ctx, s.client, []string{s.lockKey(name)}, h.token).Err(); err != nil {
		return fmt.Errorf("releasing lock %s: %w", name, err)
	}
	return nil
}

func (s *redisStorage) String() string { return "reready_test_redis:" + s.prefix }

// Interface guards
var (
	_ caddy.StorageConverter = (*Redis)(nil)
	_ caddy.Provisioner      = (*Redis)(nil)
	_ caddy.CleanerUpper     = (*Redis)(nil)
	_ caddyfile.Unmarshaler  = (*Redis)(nil)
	_ certmagic.Storage      = (*redisStorage)(nil)
)
