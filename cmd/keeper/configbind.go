package main

// How a Config is read from the environment and from flags
// (KEEPER_REDIS_ADDR, --redis.addr): both walk the Config struct by
// reflection, naming each field by its tag, so that a new config field
// needs no binding code of its own.

import (
	"encoding"
	"flag"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"
)

func envOr(environ []string, key, def string) string {
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && k == key {
			return v
		}
	}
	return def
}

// leaf reports whether a field is set as one value (not walked into).
func leaf(t reflect.Type) bool {
	if t == reflect.TypeOf(time.Duration(0)) {
		return true
	}
	return t.Kind() != reflect.Struct
}

func fieldName(f reflect.StructField) string {
	n, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	return n
}

// applyEnv sets each leaf from KEEPER_<PATH> when present.
func applyEnv(v reflect.Value, prefix string, environ []string) error {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if f.Tag.Get("env") == "-" {
			continue
		}
		name := fieldName(f)
		if name == "-" || name == "" {
			name = strings.ToLower(f.Name)
		}
		key := prefix + "_" + strings.ToUpper(strings.ReplaceAll(name, ".", "_"))
		if !leaf(f.Type) {
			if err := applyEnv(v.Field(i), key, environ); err != nil {
				return err
			}
			continue
		}
		raw := envOr(environ, key, "\x00")
		if raw == "\x00" {
			continue
		}
		if err := setValue(v.Field(i), raw); err != nil {
			return fmt.Errorf("environment %s=%q: %w", key, raw, err)
		}
	}
	return nil
}

func setValue(v reflect.Value, raw string) error {
	if tu, ok := v.Addr().Interface().(encoding.TextUnmarshaler); ok {
		return tu.UnmarshalText([]byte(raw))
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(raw)
	case reflect.Bool:
		b, err := strconv.ParseBool(raw)
		if err != nil {
			return err
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int64:
		if v.Type() == reflect.TypeOf(time.Duration(0)) {
			d, err := time.ParseDuration(raw)
			if err != nil {
				return err
			}
			v.SetInt(int64(d))
			return nil
		}
		n, err := strconv.ParseInt(raw, 10, 64)
		if err != nil {
			return err
		}
		v.SetInt(n)
	case reflect.Float64:
		f, err := strconv.ParseFloat(raw, 64)
		if err != nil {
			return err
		}
		v.SetFloat(f)
	case reflect.Slice:
		var out []string
		for _, s := range strings.Split(raw, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
		v.Set(reflect.ValueOf(out))
	default:
		return fmt.Errorf("unsupported type %s", v.Type())
	}
	return nil
}

// valueFlag adapts a config leaf to flag.Value.
type valueFlag struct {
	v   reflect.Value
	def string
}

func (f valueFlag) String() string {
	if !f.v.IsValid() {
		return ""
	}
	return f.def
}
func (f valueFlag) Set(s string) error { return setValue(f.v, s) }
func (f valueFlag) IsBoolFlag() bool   { return f.v.IsValid() && f.v.Kind() == reflect.Bool }

func bindFlags(fs *flag.FlagSet, v reflect.Value, prefix string, defaults reflect.Value) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name := fieldName(f)
		if f.Tag.Get("flag") == "-" || name == "-" || f.Tag.Get("env") == "-" {
			continue
		}
		full := prefix + name
		if !leaf(f.Type) {
			bindFlags(fs, v.Field(i), full+".", defaults.Field(i))
			continue
		}
		def := fmt.Sprint(defaults.Field(i).Interface())
		if defaults.Field(i).Kind() == reflect.Slice {
			def = strings.Join(defaults.Field(i).Interface().([]string), ",")
		}
		help := f.Tag.Get("help")
		if l, ok := limitOf(full); ok {
			help += "; accepted: " + l.text()
		}
		fs.Var(valueFlag{v: v.Field(i), def: def}, full, help)
	}
}

// copyFlags copies the leaves whose flags were given from src to dst.
func copyFlags(dst, src reflect.Value, prefix string, set map[string]bool) {
	t := dst.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		full := prefix + fieldName(f)
		if !leaf(f.Type) {
			copyFlags(dst.Field(i), src.Field(i), full+".", set)
			continue
		}
		if set[full] {
			dst.Field(i).Set(src.Field(i))
		}
	}
}
