-- mailsvc outbox on PostgreSQL, version 10: nothing to change (issue 18).
-- SQLite stores a big bulk in steps with a stage table (its 0010), because it has one writer. PostgreSQL keeps
-- one transaction per bulk: row locks and MVCC let single POSTs and lease renewals commit meanwhile. This file
-- keeps both backends' versions numbered alike.
SELECT 1;
