package teststorage

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"
)

func init() {
	caddy.RegisterModule(Faulty{})
}

// Faulty is Caddy's file_system storage rooted at Root whose calls fail
// while their names are listed, one per line, in the file Root/.faults
// (read at every call):
//
//	store   Store fails with "no space left on device"; nothing is written
//	lock    Lock and TryLock leave an empty lock file and fail, as
//	        certmagic's file_system does when the disk fills up while it
//	        writes a new lock's contents
//	stat, load, list, delete   fail with an I/O error
//
// Caddyfile: storage reready_test_faulty <root>
type Faulty struct {
	Root string `json:"root,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Faulty) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.storage.reready_test_faulty",
		New: func() caddy.Module { return new(Faulty) },
	}
}

// CertMagicStorage returns the storage.
func (f *Faulty) CertMagicStorage() (certmagic.Storage, error) {
	if f.Root == "" {
		return nil, errors.New("reready_test_faulty: a root is required")
	}
	return &faultyStorage{FileStorage: &certmagic.FileStorage{Path: f.Root}}, nil
}

// UnmarshalCaddyfile reads `reready_test_faulty <root>`.
func (f *Faulty) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module's name
	if !d.NextArg() {
		return d.ArgErr()
	}
	f.Root = d.Val()
	if d.NextArg() || d.NextBlock(0) {
		return d.ArgErr()
	}
	return nil
}

// faultyStorage is not a *certmagic.FileStorage, so its users take the
// paths they take for any other storage.
type faultyStorage struct {
	*certmagic.FileStorage
}

// fails reports whether op is listed in the control file.
func (s *faultyStorage) fails(op string) bool {
	data, err := os.ReadFile(filepath.Join(s.Path, ".faults"))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.TrimSpace(line) == op {
			return true
		}
	}
	return false
}

func ioError(op, key string) error {
	return &fs.PathError{Op: op, Path: key, Err: syscall.EIO}
}

func (s *faultyStorage) Store(ctx context.Context, key string, value []byte) error {
	if s.fails("store") {
		return &fs.PathError{Op: "write", Path: key, Err: syscall.ENOSPC}
	}
	return s.FileStorage.Store(ctx, key, value)
}

func (s *faultyStorage) Load(ctx context.Context, key string) ([]byte, error) {
	if s.fails("load") {
		return nil, ioError("read", key)
	}
	return s.FileStorage.Load(ctx, key)
}

func (s *faultyStorage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	if s.fails("stat") {
		return certmagic.KeyInfo{}, ioError("stat", key)
	}
	return s.FileStorage.Stat(ctx, key)
}

func (s *faultyStorage) List(ctx context.Context, prefix string, recursive bool) ([]string, error) {
	if s.fails("list") {
		return nil, ioError("readdir", prefix)
	}
	return s.FileStorage.List(ctx, prefix, recursive)
}

func (s *faultyStorage) Delete(ctx context.Context, key string) error {
	if s.fails("delete") {
		return ioError("unlink", key)
	}
	return s.FileStorage.Delete(ctx, key)
}

func (s *faultyStorage) Lock(ctx context.Context, name string) error {
	if s.fails("lock") {
		return s.leaveEmptyLock(name)
	}
	return s.FileStorage.Lock(ctx, name)
}

func (s *faultyStorage) TryLock(ctx context.Context, name string) (bool, error) {
	if s.fails("lock") {
		return false, s.leaveEmptyLock(name)
	}
	return s.FileStorage.TryLock(ctx, name)
}

// leaveEmptyLock does what certmagic's file_system does on a full disk:
// the lock file is created, its contents cannot be written, and the
// empty file stays.
func (s *faultyStorage) leaveEmptyLock(name string) error {
	file := filepath.Join(s.Path, "locks", certmagic.StorageKeys.Safe(name)+".lock")
	_ = os.MkdirAll(filepath.Dir(file), 0o700)
	if f, err := os.OpenFile(file, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644); err == nil {
		f.Close()
	}
	return fmt.Errorf("creating lock file: %w", &fs.PathError{Op: "write", Path: file, Err: syscall.ENOSPC})
}

// Interface guards
var (
	_ caddy.StorageConverter = (*Faulty)(nil)
	_ caddyfile.Unmarshaler  = (*Faulty)(nil)
	_ certmagic.Storage      = (*faultyStorage)(nil)
	_ certmagic.TryLocker    = (*faultyStorage)(nil)
)
