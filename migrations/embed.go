// Package migrations holds the database schema as numbered goose SQL files,
// embedded so every binary can apply them at start.
package migrations

import "embed"

// FS holds the *.sql migrations.
//
//go:embed *.sql
var FS embed.FS
