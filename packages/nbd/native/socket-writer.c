/*
 * A socket writer that sends file ranges with sendfile(2): the bytes go from
 * the page cache to the socket without passing through the process. Node has
 * no sendfile for sockets, and an NBD server spends most of its CPU copying
 * read data (page cache -> buffer -> socket); this removes both copies.
 *
 * The writer owns the write side of a connected socket (a dup of Node's
 * descriptor, so closing either never hands the other a reused number); Node
 * keeps reading from the original. Writes are queued as jobs of segments
 * (buffers, file ranges), sent without blocking, and finished in order. When
 * the socket is full, a uv_poll on the dup waits for it to drain on Node's own
 * event loop: no threads.
 *
 * JS API (see src/socket-writer.ts):
 *   open(fd, onDone(completed, errno)) -> writer
 *   buffer(writer, buf)                    add a buffer segment (JS keeps buf alive until its job is done)
 *   file(writer, fd, position, length)     add a file segment (past the end of the file: zeroes)
 *   commit(writer) -> completed | -errno   end the job and send what the socket takes now
 *   close(writer)
 * Jobs finished later are reported through onDone; an error fails the writer
 * (onDone(completed, errno) or a negative commit) and it sends nothing more.
 *
 * Beside it, system calls Node lacks, each a plain function: copyRange
 * (src/copy-file-range.ts), openTerminal and sendDescriptor (src/pseudo-terminal.ts).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <node_api.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>
#include <uv.h>

#define MAX_IOV 64
#define MAX_SENDFILE 0x7ffff000
#define ZERO_BYTES 65536
#define UNIX_SNDBUF (1 << 20)

static const char zeroes[ZERO_BYTES];

typedef struct {
  const char *data; /* buffer segment, or NULL for a file segment */
  int fd;
  int64_t position;
  size_t length;
  size_t done;
  int ends_job;
} segment;

typedef struct {
  uv_poll_t poll;
  int fd;
  int polling;
  int closed;
  int handle_closed;
  int js_released;
  int error;
  segment *segs;
  size_t head, tail, cap;
  napi_env env;
  napi_ref on_done;
  napi_async_context async_context;
} writer;

static void maybe_free(writer *w) {
  if (w->handle_closed && w->js_released) {
    free(w->segs);
    free(w);
  }
}

static void on_handle_closed(uv_handle_t *h) {
  writer *w = (writer *)h->data;
  close(w->fd);
  w->handle_closed = 1;
  maybe_free(w);
}

static void writer_close(writer *w) {
  if (w->closed) return;
  w->closed = 1;
  w->head = w->tail = 0;
  if (w->on_done) {
    napi_delete_reference(w->env, w->on_done);
    w->on_done = NULL;
  }
  if (w->async_context) {
    napi_async_destroy(w->env, w->async_context);
    w->async_context = NULL;
  }
  uv_close((uv_handle_t *)&w->poll, on_handle_closed);
}

static int push_segment(writer *w, segment s) {
  if (w->tail == w->cap) {
    if (w->head > 0) {
      memmove(w->segs, w->segs + w->head, (w->tail - w->head) * sizeof(segment));
      w->tail -= w->head;
      w->head = 0;
    } else {
      size_t cap = w->cap ? w->cap * 2 : 16;
      segment *segs = realloc(w->segs, cap * sizeof(segment));
      if (!segs) return -1;
      w->segs = segs;
      w->cap = cap;
    }
  }
  w->segs[w->tail++] = s;
  return 0;
}

/* Moves past n sent bytes; returns the number of jobs that finished. */
static int advance(writer *w, size_t n) {
  int finished = 0;
  while (w->head < w->tail) {
    segment *s = &w->segs[w->head];
    size_t left = s->length - s->done;
    if (n < left) {
      s->done += n;
      break;
    }
    n -= left;
    if (s->ends_job) finished++;
    w->head++;
  }
  if (w->head == w->tail) w->head = w->tail = 0;
  return finished;
}

static void on_writable(uv_poll_t *p, int status, int events);

/* Sends until the queue is empty or the socket is full. Returns jobs finished, or -errno. */
static int flush(writer *w) {
  int finished = 0;
  while (w->head < w->tail) {
    segment *s = &w->segs[w->head];
    ssize_t n;
    if (s->data) {
      struct iovec iov[MAX_IOV];
      int count = 0;
      size_t i = w->head;
      for (; i < w->tail && count < MAX_IOV && w->segs[i].data; i++) {
        iov[count].iov_base = (void *)(w->segs[i].data + w->segs[i].done);
        iov[count].iov_len = w->segs[i].length - w->segs[i].done;
        count++;
      }
      struct msghdr msg = {.msg_iov = iov, .msg_iovlen = count};
      /* a header followed by file data leaves in one TCP segment */
      int more = i < w->tail ? MSG_MORE : 0;
      n = sendmsg(w->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL | more);
    } else {
      size_t len = s->length - s->done;
      if (len > MAX_SENDFILE) len = MAX_SENDFILE;
      off_t pos = (off_t)(s->position + (int64_t)s->done);
      /* sendfile has no MSG_NOSIGNAL: a hung-up peer gives EPIPE because Node ignores SIGPIPE */
      n = sendfile(w->fd, s->fd, &pos, len);
      if (n == 0) {
        /* past the end of the file: the range reads as zeroes */
        if (len > ZERO_BYTES) len = ZERO_BYTES;
        n = send(w->fd, zeroes, len, MSG_DONTWAIT | MSG_NOSIGNAL);
      }
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (!w->polling) {
          int r = uv_poll_start(&w->poll, UV_WRITABLE, on_writable);
          if (r != 0) return r;
          w->polling = 1;
        }
        return finished;
      }
      return -errno;
    }
    finished += advance(w, (size_t)n);
  }
  if (w->polling) {
    uv_poll_stop(&w->poll);
    w->polling = 0;
  }
  return finished;
}

static void fail(writer *w, int err) {
  w->error = err;
  w->head = w->tail = 0;
  if (w->polling) {
    uv_poll_stop(&w->poll);
    w->polling = 0;
  }
}

static void on_writable(uv_poll_t *p, int status, int events) {
  (void)events;
  writer *w = (writer *)p->data;
  if (w->closed || w->error) return;
  int r = status < 0 ? status : flush(w);
  int finished = r < 0 ? 0 : r;
  if (r < 0) fail(w, -r);
  if (finished == 0 && r >= 0) return;
  napi_env env = w->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value fn, recv, argv[2], result;
  if (napi_get_reference_value(env, w->on_done, &fn) == napi_ok && fn != NULL) {
    napi_get_global(env, &recv);
    napi_create_int32(env, finished, &argv[0]);
    napi_create_int32(env, r < 0 ? -r : 0, &argv[1]);
    if (napi_make_callback(env, w->async_context, recv, fn, 2, argv, &result) == napi_pending_exception) {
      napi_value exception;
      napi_get_and_clear_last_exception(env, &exception);
      napi_fatal_exception(env, exception);
    }
  }
  napi_close_handle_scope(env, scope);
}

static void finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  writer *w = (writer *)data;
  writer_close(w);
  w->js_released = 1;
  maybe_free(w);
}

/* Throws an Error saying `what: strerror(err)`, with the errno name (ENOENT, …) as its `code`. */
static napi_value throw_errno(napi_env env, const char *what, int err) {
  napi_value error, text;
  char message[200];
  snprintf(message, sizeof message, "%s: %s", what, strerror(err));
  napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &text);
  napi_create_error(env, NULL, text, &error);
  const char *name = strerrorname_np(err);
  napi_create_string_utf8(env, name ? name : "EIO", NAPI_AUTO_LENGTH, &text);
  napi_set_named_property(env, error, "code", text);
  napi_throw(env, error);
  return NULL;
}

static writer *get_writer(napi_env env, napi_value v) {
  void *data = NULL;
  if (napi_get_value_external(env, v, &data) != napi_ok || data == NULL) {
    napi_throw_type_error(env, NULL, "not a socket writer");
    return NULL;
  }
  return (writer *)data;
}

static napi_value js_open(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fd;
  if (argc < 2 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) {
    napi_throw_type_error(env, NULL, "open(fd, onDone): fd must be a descriptor");
    return NULL;
  }
  struct uv_loop_s *loop;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) return NULL;
  writer *w = calloc(1, sizeof(writer));
  if (!w) return throw_errno(env, "socket writer", ENOMEM);
  w->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (w->fd < 0) {
    int err = errno;
    free(w);
    return throw_errno(env, "dup", err);
  }
  /* a Unix socket's default send buffer (wmem_default, 208 KiB) is smaller than
     one 256 KiB read reply: every reply would wait for a poll round trip.
     TCP tunes its own; the kernel caps this at wmem_max. */
  int domain = 0;
  socklen_t domain_len = sizeof domain;
  if (getsockopt(w->fd, SOL_SOCKET, SO_DOMAIN, &domain, &domain_len) == 0 && domain == AF_UNIX) {
    int size = UNIX_SNDBUF;
    setsockopt(w->fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
  }
  int r = uv_poll_init_socket(loop, &w->poll, w->fd);
  if (r != 0) {
    close(w->fd);
    free(w);
    napi_throw_error(env, NULL, uv_strerror(r));
    return NULL;
  }
  w->poll.data = w;
  w->env = env;
  napi_create_reference(env, argv[1], 1, &w->on_done);
  napi_value name;
  napi_create_string_utf8(env, "ark:nbd-socket-writer", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, NULL, name, &w->async_context);
  napi_value external;
  napi_create_external(env, w, finalize, NULL, &external);
  return external;
}

/* Adds a segment to the job being built; a failed or closed writer takes nothing, an empty segment is nothing. */
static napi_value queue_segment(napi_env env, writer *w, segment s) {
  if (w->closed || w->error || s.length == 0) return NULL;
  if (push_segment(w, s) != 0) return throw_errno(env, "socket writer", ENOMEM);
  return NULL;
}

static napi_value js_buffer(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  writer *w = get_writer(env, argv[0]);
  if (!w) return NULL;
  void *data;
  size_t length;
  if (napi_get_buffer_info(env, argv[1], &data, &length) != napi_ok) {
    napi_throw_type_error(env, NULL, "buffer(writer, buf): not a Buffer");
    return NULL;
  }
  return queue_segment(env, w, (segment){.data = data, .fd = -1, .length = length});
}

static napi_value js_file(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  writer *w = get_writer(env, argv[0]);
  if (!w) return NULL;
  int32_t fd;
  int64_t position, length;
  if (argc < 4 || napi_get_value_int32(env, argv[1], &fd) != napi_ok || napi_get_value_int64(env, argv[2], &position) != napi_ok ||
      napi_get_value_int64(env, argv[3], &length) != napi_ok || fd < 0 || position < 0 || length < 0) {
    napi_throw_type_error(env, NULL, "file(writer, fd, position, length): bad arguments");
    return NULL;
  }
  return queue_segment(env, w, (segment){.data = NULL, .fd = fd, .position = position, .length = (size_t)length});
}

static napi_value js_commit(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  writer *w = get_writer(env, argv[0]);
  if (!w) return NULL;
  napi_value out;
  if (w->closed || w->error) {
    napi_create_int32(env, -(w->error ? w->error : EBADF), &out);
    return out;
  }
  if (w->tail == w->head) {
    /* nothing queued and nothing to send: the job is done */
    napi_create_int32(env, 1, &out);
    return out;
  }
  segment *last = &w->segs[w->tail - 1];
  if (!last->ends_job) {
    last->ends_job = 1;
  } else {
    /* an empty job behind others: a zero-length marker finishes it in order */
    segment marker = {.data = zeroes, .fd = -1, .length = 0, .ends_job = 1};
    if (push_segment(w, marker) != 0) return throw_errno(env, "socket writer", ENOMEM);
  }
  int r = w->polling ? 0 : flush(w);
  if (r < 0) fail(w, -r);
  napi_create_int32(env, r, &out);
  return out;
}

static napi_value js_close(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  writer *w = get_writer(env, argv[0]);
  if (!w) return NULL;
  writer_close(w);
  return NULL;
}

/*
 * copyRange(fdIn, positionIn, fdOut, positionOut, length) -> bytes copied
 * copy_file_range(2): file to file inside the kernel (a reflink where the file
 * system shares blocks), never through this process. Fewer bytes than asked
 * only at the end of the input. Throws with the errno name in `code`.
 */
static napi_value js_copy_range(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fd_in, fd_out;
  int64_t in, out, length;
  if (argc < 5 || napi_get_value_int32(env, argv[0], &fd_in) != napi_ok || napi_get_value_int64(env, argv[1], &in) != napi_ok ||
      napi_get_value_int32(env, argv[2], &fd_out) != napi_ok || napi_get_value_int64(env, argv[3], &out) != napi_ok ||
      napi_get_value_int64(env, argv[4], &length) != napi_ok || fd_in < 0 || fd_out < 0 || in < 0 || out < 0 || length < 0) {
    napi_throw_type_error(env, NULL, "copyRange(fdIn, positionIn, fdOut, positionOut, length): bad arguments");
    return NULL;
  }
  off_t off_in = in, off_out = out;
  int64_t done = 0;
  while (done < length) {
    ssize_t n = copy_file_range(fd_in, &off_in, fd_out, &off_out, (size_t)(length - done), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return throw_errno(env, "copy_file_range", errno);
    if (n == 0) break;
    done += n;
  }
  napi_value result;
  napi_create_int64(env, done, &result);
  return result;
}

/*
 * openTerminal() -> { master, slave, path }
 * A pseudo-terminal pair (what an OCI runtime hands conmon for `-t`), both
 * close-on-exec, neither the caller's controlling terminal. The slave is in
 * raw mode: the workload's own terminal is the guest's, so the host side only
 * carries bytes (no echo, no line editing, no signals, no CR/LF changes).
 */
static napi_value js_open_terminal(napi_env env, napi_callback_info info) {
  (void)info;
  int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (master < 0) return throw_errno(env, "posix_openpt", errno);
  char path[128];
  if (grantpt(master) < 0 || unlockpt(master) < 0 || ptsname_r(master, path, sizeof path) != 0) {
    int err = errno;
    close(master);
    return throw_errno(env, "unlockpt", err);
  }
  int slave = open(path, O_RDWR | O_NOCTTY | O_CLOEXEC);
  struct termios mode;
  if (slave < 0 || tcgetattr(slave, &mode) < 0 || (cfmakeraw(&mode), tcsetattr(slave, TCSANOW, &mode)) < 0) {
    int err = errno;
    if (slave >= 0) close(slave);
    close(master);
    return throw_errno(env, path, err);
  }
  napi_value result, value;
  napi_create_object(env, &result);
  napi_create_int32(env, master, &value);
  napi_set_named_property(env, result, "master", value);
  napi_create_int32(env, slave, &value);
  napi_set_named_property(env, result, "slave", value);
  napi_create_string_utf8(env, path, NAPI_AUTO_LENGTH, &value);
  napi_set_named_property(env, result, "path", value);
  return result;
}

/*
 * sendDescriptor(socketPath, fd, name)
 * Connects to a Unix stream socket and sends fd with SCM_RIGHTS, `name` as
 * the message's bytes (runc's console-socket protocol: the pty master, named
 * by its slave's path). Node's net module cannot send descriptors.
 */
static napi_value js_send_descriptor(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
  char name[256];
  size_t path_length = 0, name_length = 0;
  int32_t fd;
  if (argc < 3 || napi_get_value_string_utf8(env, argv[0], path, sizeof path, &path_length) != napi_ok || path_length == 0 ||
      path_length >= sizeof path - 1 || napi_get_value_int32(env, argv[1], &fd) != napi_ok || fd < 0 ||
      napi_get_value_string_utf8(env, argv[2], name, sizeof name, &name_length) != napi_ok || name_length == 0) {
    napi_throw_type_error(env, NULL, "sendDescriptor(socketPath, fd, name): bad arguments");
    return NULL;
  }
  int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (sock < 0) return throw_errno(env, "socket", errno);
  struct sockaddr_un address = {.sun_family = AF_UNIX};
  memcpy(address.sun_path, path, path_length);
  if (connect(sock, (struct sockaddr *)&address, sizeof address) < 0) {
    int err = errno;
    close(sock);
    return throw_errno(env, path, err);
  }
  union {
    char buffer[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } control;
  memset(&control, 0, sizeof control);
  struct iovec data = {.iov_base = name, .iov_len = name_length};
  struct msghdr message = {.msg_iov = &data, .msg_iovlen = 1, .msg_control = control.buffer, .msg_controllen = sizeof control.buffer};
  struct cmsghdr *header = CMSG_FIRSTHDR(&message);
  header->cmsg_level = SOL_SOCKET;
  header->cmsg_type = SCM_RIGHTS;
  header->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(header), &fd, sizeof(int));
  ssize_t sent;
  do sent = sendmsg(sock, &message, MSG_NOSIGNAL);
  while (sent < 0 && errno == EINTR);
  int err = errno;
  close(sock);
  if (sent < 0) return throw_errno(env, "sendmsg", err);
  return NULL;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
      {"open", NULL, js_open, NULL, NULL, NULL, napi_default_method, NULL},
      {"buffer", NULL, js_buffer, NULL, NULL, NULL, napi_default_method, NULL},
      {"file", NULL, js_file, NULL, NULL, NULL, napi_default_method, NULL},
      {"commit", NULL, js_commit, NULL, NULL, NULL, napi_default_method, NULL},
      {"close", NULL, js_close, NULL, NULL, NULL, napi_default_method, NULL},
      {"copyRange", NULL, js_copy_range, NULL, NULL, NULL, napi_default_method, NULL},
      {"openTerminal", NULL, js_open_terminal, NULL, NULL, NULL, napi_default_method, NULL},
      {"sendDescriptor", NULL, js_send_descriptor, NULL, NULL, NULL, napi_default_method, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}
