// Package config reads a service's settings from its environment, with
// defaults, through the getenv a service's run was given.
package config

import (
	"fmt"
	"strconv"
	"time"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/postgres"
)

// Env reads settings; a zero Env reads nothing.
type Env func(string) string

// String returns key's value, or def when it is unset.
func (e Env) String(key, def string) string {
	if v := e(key); v != "" {
		return v
	}
	return def
}

// Int returns key's value as an int, or def when it is unset.
func (e Env) Int(key string, def int) (int, error) {
	v := e(key)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", key, err)
	}
	return n, nil
}

// Float returns key's value as a float64, or def when it is unset.
func (e Env) Float(key string, def float64) (float64, error) {
	v := e(key)
	if v == "" {
		return def, nil
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", key, err)
	}
	return f, nil
}

// Duration returns key's value as a time.Duration, or def when it is unset.
func (e Env) Duration(key string, def time.Duration) (time.Duration, error) {
	v := e(key)
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", key, err)
	}
	return d, nil
}

// WithDefault returns getenv with def as key's value when getenv has
// none: a service's own default for a setting others default differently.
func WithDefault(getenv func(string) string, key, def string) func(string) string {
	return func(k string) string {
		if v := getenv(k); v != "" || k != key {
			return v
		}
		return def
	}
}

// DatabaseURL is DATABASE_URL or the local default.
func (e Env) DatabaseURL() string { return e.String("DATABASE_URL", postgres.DefaultURL) }

// BrokerURLs is RABBITMQ_URL (a comma-separated list, one per cluster node)
// or the local default.
func (e Env) BrokerURLs() []string {
	return broker.ParseURLs(e.String("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"))
}
