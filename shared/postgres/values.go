package postgres

import (
	"strconv"
	"strings"
	"sync"
)

// Values renders the VALUES list of a statement writing n rows, each row
// written as row with its own parameters, numbered $1 to $width:
//
//	Values("($1, $2, now())", 2, 3) == "($1, $2, now()), ($3, $4, now()), ($5, $6, now())"
//
// The arguments then go row after row. A multi-row VALUES costs the server
// far less per row than the same rows passed as arrays to unnest() when
// there are few of them (a fifth of a millisecond less for one row, here),
// which is the common case of a group commit at ordinary load. Each n is a
// statement of its own text, prepared once per connection.
func Values(row string, width, n int) string {
	key := valuesKey{row, width, n}
	if s, ok := valuesCache.Load(key); ok {
		return s.(string)
	}
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		rest := row
		for {
			at := strings.IndexByte(rest, '$')
			if at < 0 {
				b.WriteString(rest)
				break
			}
			end := at + 1
			for end < len(rest) && rest[end] >= '0' && rest[end] <= '9' {
				end++
			}
			b.WriteString(rest[:at+1])
			if k, err := strconv.Atoi(rest[at+1 : end]); err == nil {
				b.WriteString(strconv.Itoa(k + i*width))
			}
			rest = rest[end:]
		}
	}
	s := b.String()
	valuesCache.Store(key, s)
	return s
}

type valuesKey struct {
	row      string
	width, n int
}

// valuesCache holds the lists rendered so far: a handful of statements,
// each for up to a group's size of rows.
var valuesCache sync.Map
