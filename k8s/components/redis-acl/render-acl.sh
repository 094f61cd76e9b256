#!/bin/sh
# render-acl.sh TEMPLATE OUT: the Redis ACL file for this deployment from users.acl. Each
# #{{NAME}} becomes #<sha256 of $NAME> (Redis compares password hashes; no password is in
# the file); a user whose $NAME is unset or empty is written `off` (it cannot log in).
# Passwords: letters, digits, '-' and '_' only (they also go into redis:// URLs).
set -eu
in=$1
out=$2
umask 077
tmp="$out.tmp.$$"
: > "$tmp"
while IFS= read -r line || [ -n "$line" ]; do
  case "$line" in
    "#"*|"") continue ;;
    *"{{"*"}}"*)
      name=${line#*\{\{}
      name=${name%%\}\}*}
      eval "val=\${$name:-}"
      if [ -z "$val" ]; then
        line=$(printf '%s\n' "$line" | sed "s/ on #{{$name}}/ off resetpass/")
      else
        case "$val" in
          *[!A-Za-z0-9_-]*) echo "render-acl.sh: $name: use letters, digits, - and _ only" >&2; exit 1 ;;
        esac
        hash=$(printf '%s' "$val" | sha256sum | cut -d' ' -f1)
        line=$(printf '%s\n' "$line" | sed "s/{{$name}}/$hash/")
      fi ;;
  esac
  printf '%s\n' "$line" >> "$tmp"
done < "$in"
mv "$tmp" "$out"
