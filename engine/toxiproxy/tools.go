//go:build tools

// Package tools pins toxiproxy's server and CLI main packages so `go mod tidy`
// keeps their whole dependency graph in go.sum.
package tools

import (
	_ "github.com/Shopify/toxiproxy/v2/cmd/cli"
	_ "github.com/Shopify/toxiproxy/v2/cmd/server"
)
