package queue

import (
	"fmt"
	"strconv"
	"strings"
)

// MaxNameLen bounds queue names so that every key stays short and a name can
// never be used to smuggle a huge value into Redis.
const MaxNameLen = 128

// ValidateName reports whether name is a usable queue name: 1..MaxNameLen
// characters from letters, digits and `._:-`. Braces, `#` and whitespace are
// refused because they would break the `{<queue>#<p>}` hash tag and the
// space-separated wake messages.
func ValidateName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: queue name is empty", ErrBadName)
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("%w: queue name is %d bytes, the limit is %d", ErrBadName, len(name), MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.', c == '_', c == ':', c == '-':
		default:
			return fmt.Errorf("%w: %q has %q at byte %d (allowed: letters, digits and ._:-)", ErrBadName, name, c, i)
		}
	}
	return nil
}

// Shard is one partition of one queue, the unit of housekeeping.
type Shard struct {
	Queue     string
	Partition int
}

// String is the shard's name, "<queue>#<p>", used in logs, metrics, wake
// messages and etcd.
func (s Shard) String() string { return s.Queue + "#" + strconv.Itoa(s.Partition) }

// ParseShard is the inverse of Shard.String.
func ParseShard(name string) (Shard, error) {
	i := strings.LastIndexByte(name, '#')
	if i < 0 {
		return Shard{}, fmt.Errorf("%w: shard %q has no '#'", ErrBadName, name)
	}
	q, ps := name[:i], name[i+1:]
	if err := ValidateName(q); err != nil {
		return Shard{}, err
	}
	p, err := strconv.Atoi(ps)
	if err != nil || p < 0 || strconv.Itoa(p) != ps {
		return Shard{}, fmt.Errorf("%w: shard %q has a bad partition number", ErrBadName, name)
	}
	return Shard{Queue: q, Partition: p}, nil
}

// ValidateID checks a caller-chosen message id. Ids are opaque bytes to
// Redis; the bound keeps one id from costing more than its payload.
func ValidateID(id string) error {
	if id == "" {
		return fmt.Errorf("%w: message id is empty", ErrBadMessage)
	}
	if len(id) > MaxIDLen {
		return fmt.Errorf("%w: message id is %d bytes, the limit is %d", ErrBadMessage, len(id), MaxIDLen)
	}
	return nil
}

// MaxIDLen bounds message ids.
const MaxIDLen = 256
