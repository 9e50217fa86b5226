/* workspace.c: per-thread grow-only buffers (workspace.h). */
#include "workspace.h"

#include <pthread.h>
#include <stdlib.h>

static _Thread_local struct {
    void *p[RT_WS_SLOTS];
    size_t cap[RT_WS_SLOTS];
    int registered; /* this thread's exit frees its buffers */
} ws;

static pthread_key_t exit_key;
static int exit_key_made;
static pthread_once_t exit_once = PTHREAD_ONCE_INIT;

static void at_thread_exit(void *unused)
{
    (void)unused;
    rt_workspace_release();
    ws.registered = 0;
}

static void make_exit_key(void)
{
    exit_key_made = pthread_key_create(&exit_key, at_thread_exit) == 0;
}

void *rt_workspace(rt_ws_slot slot, size_t bytes)
{
    bytes = (bytes + 63) / 64 * 64;
    if (bytes <= ws.cap[slot] && ws.p[slot])
        return ws.p[slot];
    if (!ws.registered) {
        /* the key's value only has to be non-NULL for the destructor to run */
        if (pthread_once(&exit_once, make_exit_key) != 0 || !exit_key_made ||
            pthread_setspecific(exit_key, &ws) != 0)
            return NULL;
        ws.registered = 1;
    }
    free(ws.p[slot]);
    ws.p[slot] = aligned_alloc(64, bytes ? bytes : 64);
    ws.cap[slot] = ws.p[slot] ? bytes : 0;
    return ws.p[slot];
}

void rt_workspace_release(void)
{
    for (int s = 0; s < RT_WS_SLOTS; s++) {
        free(ws.p[s]);
        ws.p[s] = NULL;
        ws.cap[s] = 0;
    }
}
