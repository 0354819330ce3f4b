//go:build linux

package rereadyverify

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"golang.org/x/sys/unix"
)

// dirProbe answers "is this name in the directory?" for one directory of
// a file_system storage with a single fstatat relative to the directory,
// instead of a stat of the whole path: the live path asks it for every
// delivery with the queue on. The directory is opened again every second,
// so one replaced under a running gateway is seen again within a second.
type dirProbe struct {
	path string
	cur  atomic.Pointer[openDir]
}

type openDir struct {
	f  *os.File
	at time.Time
}

// dirReopen is how long an opened directory is used before it is opened
// again.
const dirReopen = time.Second

// newDirProbe returns a probe of the directory for prefix in fsys.
func newDirProbe(fsys *certmagic.FileStorage, prefix string) *dirProbe {
	return &dirProbe{path: filepath.Join(fsys.Path, filepath.FromSlash(prefix))}
}

// exists reports whether name is in the directory. ok is false when the
// probe cannot tell (the directory cannot be opened): ask the storage.
func (d *dirProbe) exists(name string) (found, ok bool, err error) {
	for range 2 { // a handle closed by a concurrent reopen: once more
		od := d.dir()
		if od == nil {
			return false, false, nil
		}
		raw, rerr := od.f.SyscallConn()
		if rerr != nil {
			return false, false, nil
		}
		var serr error
		cerr := raw.Control(func(fd uintptr) {
			var st unix.Stat_t
			serr = unix.Fstatat(int(fd), name, &st, unix.AT_SYMLINK_NOFOLLOW)
		})
		if cerr != nil {
			continue
		}
		switch {
		case serr == nil:
			return true, true, nil
		case errors.Is(serr, unix.ENOENT):
			return false, true, nil
		}
		return false, true, &os.PathError{Op: "fstatat", Path: filepath.Join(d.path, name), Err: serr}
	}
	return false, false, nil
}

// empty reports whether the directory has no entry (an absent one has
// none). ok is false when it cannot tell.
func (d *dirProbe) empty() (empty, ok bool) {
	f, err := os.Open(d.path)
	if errors.Is(err, fs.ErrNotExist) {
		return true, true
	}
	if err != nil {
		return false, false
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	switch {
	case len(names) > 0:
		return false, true
	case err == io.EOF:
		return true, true
	}
	return false, false
}

// fileID identifies one version of a file: a file_system storage writes a
// key through a new file renamed over the old one, so another write, here
// or by another gateway on the same directory, changes it.
type fileID struct {
	dev, ino     uint64
	size         int64
	mtime, ctime unix.Timespec
}

// identity is exists with the file's fileID when it is found.
func (d *dirProbe) identity(name string) (id fileID, found, ok bool, err error) {
	od := d.dir()
	if od == nil {
		return id, false, false, nil
	}
	raw, rerr := od.f.SyscallConn()
	if rerr != nil {
		return id, false, false, nil
	}
	var serr error
	if cerr := raw.Control(func(fd uintptr) {
		var st unix.Stat_t
		if serr = unix.Fstatat(int(fd), name, &st, unix.AT_SYMLINK_NOFOLLOW); serr == nil {
			id = fileID{dev: st.Dev, ino: st.Ino, size: st.Size, mtime: st.Mtim, ctime: st.Ctim}
		}
	}); cerr != nil {
		return id, false, false, nil // closed by a concurrent reopen: ask the storage
	}
	switch {
	case serr == nil:
		return id, true, true, nil
	case errors.Is(serr, unix.ENOENT):
		return id, false, true, nil
	}
	return id, false, true, &os.PathError{Op: "fstatat", Path: filepath.Join(d.path, name), Err: serr}
}

// dir returns the open directory, opening it (and creating it: the storage
// creates it at the first store anyway) when it is not open or was opened
// more than dirReopen ago. nil: it cannot be opened.
func (d *dirProbe) dir() *openDir {
	od := d.cur.Load()
	now := time.Now()
	if od != nil && now.Sub(od.at) < dirReopen {
		return od
	}
	_ = os.MkdirAll(d.path, 0o700)
	f, err := os.Open(d.path)
	if err != nil {
		return nil
	}
	fresh := &openDir{f: f, at: now}
	if !d.cur.CompareAndSwap(od, fresh) {
		f.Close() // another goroutine reopened it first
		return d.cur.Load()
	}
	if od != nil {
		od.f.Close()
	}
	return fresh
}
