-- The one-stop-shop database's dossiers in the `dossier` dataset's terms (the demo's schema
-- `bench`, loaded by `parstat demo --postgres`). Used by bench/extract_pg.sh for parstat and
-- for its peers, so that all of them run exactly this query.
SELECT h.ma_ho_so AS dossier_code, h.ma_thu_tuc AS procedure_code, t.ten_thu_tuc AS procedure_name,
       t.ma_linh_vuc AS field_code, l.ten_linh_vuc AS field_name, h.ma_don_vi AS agency_code,
       d.ten_don_vi AS agency_name,
       CASE d.cap_don_vi WHEN 'TINH' THEN 'province' WHEN 'HUYEN' THEN 'district' ELSE 'commune' END AS agency_level,
       d.ma_dia_ban AS area_code, t.muc_do AS service_level, h.kenh_thuc_hien AS channel,
       h.loai_doi_tuong AS applicant_type, h.chu_ho_so AS applicant_name, h.so_giay_to AS applicant_id,
       h.so_dien_thoai AS applicant_phone, h.dia_chi AS applicant_address, h.trang_thai AS status,
       h.ngay_nop AS submitted_at, h.ngay_tiep_nhan AS received_at, h.ngay_hen_tra AS due_at,
       h.ngay_ket_thuc_xu_ly AS finished_at, h.ngay_tra AS returned_at, h.so_lan_bo_sung AS supplement_count,
       h.tong_phi AS fee_vnd, (h.thanh_toan_truc_tuyen IN (1, 2)) AS paid_online,
       h.co_thanh_phan_so_hoa AS digitized, h.xac_thuc_vneid AS vneid_verified, h.ngay_cap_nhat AS updated_at
FROM bench.ho_so h
JOIN bench.thu_tuc t ON t.ma_thu_tuc = h.ma_thu_tuc
JOIN bench.linh_vuc l ON l.ma_linh_vuc = t.ma_linh_vuc
JOIN bench.don_vi d ON d.ma_don_vi = h.ma_don_vi
WHERE h.ngay_cap_nhat >= $watermark
