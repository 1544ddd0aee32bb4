#!/usr/bin/env bash
# Assembles, under $1, the root filesystem of the runtime image: this stage's Python (the same
# PYTHON_BASE every stage is built on) with its standard library, /opt/venv, tini, the CA bundle,
# and exactly the shared libraries that these load (by ldd; plus libgcc_s, which glibc dlopens to
# unwind threads). No shell, package manager or coreutils: nothing the service runs needs them,
# and they were most of the image (Dockerfile, docs/deploy.md "Image size").
#
#   assemble-rootfs.sh /rootfs     # in the Dockerfile's rootfs stage, as root
set -euo pipefail

root=${1:?usage: assemble-rootfs.sh ROOT}
python=$(command -v python3)
mkdir -p "$root"

# A path and, when it is a symlink, what it points to, with every parent directory's symlinks
# (merged /usr: /lib -> usr/lib) kept as symlinks.
copy() {
  local path=$1
  [ -e "$path" ] || [ -L "$path" ] || return 0
  local parent
  parent=$(dirname "$path")
  if [ "$parent" != / ] && [ ! -e "$root$parent" ]; then
    copy "$parent"
  fi
  if [ -L "$path" ]; then
    [ -e "$root$path" ] || [ -L "$root$path" ] || cp -P "$path" "$root$path"
    local target
    target=$(readlink "$path")
    case $target in
      /*) copy "$target" ;;
      *) copy "$parent/$target" ;;
    esac
  elif [ -d "$path" ]; then
    mkdir -p "$root$path"
  else
    [ -e "$root$path" ] || cp -p "$path" "$root$path"
  fi
}

# The interpreter (through the venv's python -> /usr/bin/python3 -> python3.X chain) and its
# standard library, without what no service process imports, and so without the libraries only
# those load: the test suite, IDLE, Tk, turtle, ensurepip (and its pip), lib2to3; terminal
# modules (readline, curses: ncurses, tinfo), dbm (Berkeley DB, gdbm), sqlite3 and NIS (Kerberos).
copy /opt/venv/bin/python
copy "$python"
stdlib=$("$python" -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')
copy "$stdlib"
tar -C / -c \
    --exclude="${stdlib#/}/test" --exclude="${stdlib#/}/idlelib" --exclude="${stdlib#/}/tkinter" \
    --exclude="${stdlib#/}/turtledemo" --exclude="${stdlib#/}/ensurepip" --exclude="${stdlib#/}/lib2to3" \
    --exclude="${stdlib#/}/sqlite3" --exclude="${stdlib#/}/dbm" --exclude="${stdlib#/}/curses" \
    --exclude="${stdlib#/}/lib-dynload/_tkinter*" --exclude="${stdlib#/}/lib-dynload/readline*" \
    --exclude="${stdlib#/}/lib-dynload/_curses*" --exclude="${stdlib#/}/lib-dynload/_dbm*" \
    --exclude="${stdlib#/}/lib-dynload/_gdbm*" --exclude="${stdlib#/}/lib-dynload/_sqlite3*" \
    --exclude="${stdlib#/}/lib-dynload/nis*" \
    "${stdlib#/}" | tar -C "$root" -x
libpython=$("$python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR") or "")')
for lib in "$libpython"/libpython3*.so*; do copy "$lib"; done

tar -C / -c opt/venv | tar -C "$root" -x
copy /usr/bin/tini-static
ln -s tini-static "$root/usr/bin/tini"

# Every shared library that an executable or extension module here links, and their own.
needed=$(mktemp)
{
  echo "$(readlink -f "$python")"
  find "$root$stdlib/lib-dynload" /opt/venv -type f \( -name '*.so' -o -name '*.so.*' \)
  find /opt/venv/bin -type f -perm -u+x -exec sh -c 'head -c 4 "$1" | grep -q ELF' _ {} \; -print
} | while read -r binary; do
  ldd "$binary" 2>/dev/null | awk '/=> \// { print $3 } /^[ \t]*\/[^ ]+ \(/ { print $1 }'
done | sort -u > "$needed"
while read -r lib; do copy "$lib"; done < "$needed"
rm -f "$needed"
# glibc dlopens libgcc_s from its own directory (ldd does not list it): take the one beside libc.
libc=$(ldd "$(readlink -f "$python")" | awk '/libc\.so/ { print $3 }')
copy "$(dirname "$libc")/libgcc_s.so.1"
copy /etc/ld.so.cache

# TLS trust (JWKS over https, verify-full to PostgreSQL/Redis when configured) and OpenSSL's config.
copy /etc/ssl/certs/ca-certificates.crt
copy /etc/ssl/openssl.cnf
for entry in /usr/lib/ssl/*; do copy "$entry"; done

# Users (root and the service's own 10001), name resolution, the writable and owned directories.
mkdir -p "$root/etc" "$root/tmp" "$root/home/orders" "$root/keys"
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\norders:x:10001:10001::/home/orders:/usr/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\norders:x:10001:\n' > "$root/etc/group"
copy /etc/nsswitch.conf
chmod 1777 "$root/tmp"
chown 10001:10001 "$root/home/orders" "$root/keys"
chmod 0750 "$root/keys"
